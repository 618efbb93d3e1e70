// The chat page: one conversation on screen, at most one reply streaming into it. A reply runs
// in the service, not in this page: leaving it (switch, reload) only stops listening, and
// opening the conversation again re-attaches after the last event the page had.

import * as api from "./api.js";
import * as store from "./conversations.js";
import { render } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const ui = {
  messages: $("messages"),
  input: $("message"),
  form: $("composer"),
  send: $("send"),
  stop: $("stop"),
  error: $("error"),
  errorText: $("error-text"),
  retry: $("retry"),
  notice: $("notice"),
  list: $("conversations"),
  noConversations: $("no-conversations"),
  announcer: $("announcer"),
  sidebar: $("sidebar"),
  menu: $("menu"),
  auth: $("auth"),
  authForm: $("auth-form"),
  authReason: $("auth-reason"),
  token: $("token"),
};

// `generation` changes whenever another conversation is opened: work begun for the previous one
// checks it before touching the page. `reply` is the reply streaming in now, if any.
const view = { id: null, stored: 0, generation: 0, reply: null };
const expired = new Set();
let onRetry = null;

// ---- what is on screen

function renderList() {
  const items = store.list().map(({ id, title }) => {
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = title;
    open.title = title;
    open.addEventListener("click", () => openConversation(id));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Delete “${title}”`);
    remove.addEventListener("click", () => deleteConversation(id));
    const item = document.createElement("li");
    item.dataset.sessionId = id;
    if (id === view.id) item.setAttribute("aria-current", "true");
    if (expired.has(id)) {
      item.dataset.expired = "true";
      const label = document.createElement("span");
      label.className = "expired";
      label.textContent = "expired";
      open.append(" ", label);
    }
    item.append(open, remove);
    return item;
  });
  ui.list.replaceChildren(...items);
  ui.noConversations.hidden = items.length > 0;
}

function addMessage(role, text) {
  const article = document.createElement("article");
  article.className = "message";
  article.dataset.role = role;
  const content = document.createElement("div");
  content.className = "content";
  const meta = document.createElement("div");
  meta.className = "meta";
  article.append(content, meta);
  ui.messages.append(article);
  setText(article, text);
  return article;
}

function setText(article, text) {
  const content = article.querySelector(".content");
  // A person's own words are shown as typed; replies are Markdown.
  if (article.dataset.role === "user") content.textContent = text;
  else content.replaceChildren(render(text));
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function setMeta(article, { model, usage, stopped }) {
  const parts = [];
  if (model) parts.push(model);
  if (usage) {
    const guessed = usage.source === "estimate" ? " (estimated)" : "";
    parts.push(`${usage.input_tokens} in, ${usage.output_tokens} out tokens${guessed}`);
  }
  if (stopped) parts.push("stopped");
  if (model) article.dataset.model = model;
  if (stopped) article.dataset.stopped = "true";
  article.querySelector(".meta").textContent = parts.join(" · ");
}

function setStreaming(article, streaming) {
  document.body.dataset.streaming = String(streaming);
  ui.send.hidden = streaming;
  ui.stop.hidden = !streaming;
  ui.stop.disabled = false;
  if (article) article.dataset.streaming = String(streaming);
}

function announce(text) {
  ui.announcer.textContent = "";
  requestAnimationFrame(() => (ui.announcer.textContent = text));
}

function describe(error) {
  if (error instanceof api.Unreachable) return "The service is unreachable. Is it running?";
  switch (error.status) {
    case 401:
      return "This service needs a token.";
    case 429:
      return error.retryAfter === null
        ? "Too many requests: try again shortly."
        : `Too many requests: try again in ${error.retryAfter} s.`;
    case 502:
      return "The model failed to answer.";
    case 504:
      return "The model timed out.";
    case 503:
      return "The service's storage is unavailable; try again in a moment.";
    case 410:
      return "This page fell too far behind the reply; reload to see it stored.";
    default:
      return `Something went wrong (${error.status}): ${error.message}`;
  }
}

function showError(error, retry = null) {
  ui.error.dataset.status = error instanceof api.Unreachable ? "unreachable" : String(error.status);
  ui.errorText.textContent = describe(error);
  ui.retry.hidden = !retry;
  onRetry = retry;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  delete ui.error.dataset.status;
  onRetry = null;
}

function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

// ---- conversations

async function openConversation(id) {
  const generation = ++view.generation;
  view.reply?.controller.abort();
  view.reply = null;
  setStreaming(null, false);
  view.id = id;
  view.stored = 0;
  store.open(id);
  clearError();
  showNotice("");
  ui.messages.replaceChildren();
  ui.sidebar.classList.remove("open");
  ui.menu.setAttribute("aria-expanded", "false");
  renderList();
  ui.input.focus();
  if (!id) return;

  const running = store.running(id);
  let messages;
  try {
    messages = await api.history(id);
  } catch (error) {
    if (generation === view.generation) showError(error, () => openConversation(id));
    return;
  }
  if (generation !== view.generation) return;
  if (messages === null && !(running && running.stored === 0)) {
    expired.add(id);
    renderList();
    showNotice("This conversation has expired: the service no longer keeps it.");
    return;
  }
  messages = messages ?? [];
  for (const message of messages) {
    setMeta(addMessage(message.role, message.content), { model: message.model });
  }
  view.stored = messages.length;
  if (running) resume(id, running, messages.length, generation); // streams on its own
}

/** Picks up a reply that was running when the page left it. */
async function resume(id, running, stored, generation) {
  if (stored > running.stored) {
    store.finished(id); // it ended and was stored meanwhile: the history shows it
    return;
  }
  const reply = startReply(running.message, running.text);
  const state = { ...running, id };
  try {
    const events = await api.reattach(id, running.lastEventId, reply.controller.signal);
    if (events === null) {
      // Nothing more to come: what is stored is the truth.
      store.finished(id);
      if (generation === view.generation) await openConversation(id);
      return;
    }
    await follow(events, reply, state);
  } catch (error) {
    failed(error, reply, state, generation);
  } finally {
    endReply(reply, generation);
  }
}

async function deleteConversation(id) {
  try {
    if (store.running(id)) await stopAndWait(id);
    await api.forget(id);
  } catch (error) {
    showError(error);
    return;
  }
  expired.delete(id);
  store.remove(id);
  if (view.id === id) await openConversation(null);
  else renderList();
}

/** Stops a running reply and waits for its end: it is stored when it ends, so a delete
 * sent before that would be undone by it. */
async function stopAndWait(id) {
  await api.stop(id);
  const events = await api.reattach(id, store.running(id)?.lastEventId);
  if (events) for await (const _ of events); // read to its done
}

// ---- a reply

function startReply(message, text = "") {
  const question = addMessage("user", message);
  const answer = addMessage("assistant", text);
  const reply = { controller: new AbortController(), question, answer, stopAsked: false, id: view.id };
  view.reply = reply;
  setStreaming(answer, true);
  return reply;
}

function endReply(reply, generation) {
  if (generation !== view.generation || view.reply !== reply) return;
  view.reply = null;
  setStreaming(reply.answer, false);
  ui.input.focus();
}

async function sendMessage(message) {
  if (view.reply || !message.trim()) return;
  clearError();
  showNotice("");
  const generation = view.generation;
  const reply = startReply(message);
  const state = { id: view.id, message, text: "", lastEventId: null, stored: view.stored };
  try {
    const events = await api.send(view.id, message, reply.controller.signal);
    await follow(events, reply, state);
  } catch (error) {
    failed(error, reply, state, generation);
  } finally {
    endReply(reply, generation);
  }
}

/** Shows each event of a reply as it comes, and notes how far it got. */
async function follow(events, reply, state) {
  let ended = false;
  for await (const { event, id, data } of events) {
    if (event === "session") {
      state.id = reply.id = data.session_id;
      if (!view.id) {
        view.id = state.id;
        store.add(state.id, state.message);
        store.open(state.id);
        renderList();
      }
      if (reply.stopAsked) api.stop(state.id).catch(() => {});
    } else if (event === "delta") {
      state.text += data.text;
      setText(reply.answer, state.text);
    } else if (event === "done") {
      ended = true;
      store.finished(state.id);
      setText(reply.answer, data.response);
      setMeta(reply.answer, data);
      view.stored = state.stored + 2;
      announce(`Reply: ${data.response}`);
    } else if (event === "error") {
      store.finished(state.id);
      throw new api.ServiceError(data.status_code, data.detail);
    }
    if (!ended && state.id) {
      state.lastEventId = id ?? state.lastEventId;
      const { message, text, lastEventId, stored } = state;
      store.progress(state.id, { message, text, lastEventId, stored });
    }
  }
  if (!ended) throw new api.Unreachable();
}

function failed(error, reply, state, generation) {
  if (error.name === "AbortError" || generation !== view.generation) return;
  // Nothing of a failed exchange is stored, so nothing of it stays on screen.
  reply.question.remove();
  reply.answer.remove();
  const stillRunning = error instanceof api.Unreachable && state.id && store.running(state.id);
  let retry = null;
  if (stillRunning) retry = () => openConversation(state.id); // re-attach, do not send twice
  else if ([502, 503, 504].includes(error.status) || error instanceof api.Unreachable) {
    retry = () => sendMessage(state.message);
  } else if (!ui.input.value) ui.input.value = state.message;
  showError(error, retry);
}

// ---- the token

let tokenAsked = null;
api.whenTokenNeeded((refused) => {
  tokenAsked ??= new Promise((resolve) => {
    ui.authReason.textContent = refused
      ? "The service refused that token. Enter another one."
      : "This service needs a token.";
    ui.token.value = "";
    const done = (value) => {
      ui.auth.close();
      tokenAsked = null;
      resolve(value);
    };
    ui.authForm.onsubmit = (event) => {
      event.preventDefault();
      done(ui.token.value.trim() || null);
    };
    $("auth-cancel").onclick = () => done(null);
    ui.auth.oncancel = (event) => {
      event.preventDefault();
      done(null);
    };
    ui.auth.showModal();
    ui.token.focus();
  });
  return tokenAsked;
});

// ---- wiring

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const message = ui.input.value;
  if (view.reply || !message.trim()) return;
  ui.input.value = "";
  sendMessage(message);
  ui.input.focus();
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.form.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => {
  const reply = view.reply;
  if (!reply) return;
  reply.stopAsked = true;
  ui.stop.disabled = true;
  if (reply.id) api.stop(reply.id).catch((error) => showError(error));
  ui.input.focus();
});

ui.retry.addEventListener("click", () => {
  const retry = onRetry;
  clearError();
  retry?.();
});

$("new").addEventListener("click", () => openConversation(null));

ui.menu.addEventListener("click", () => {
  const open = ui.sidebar.classList.toggle("open");
  ui.menu.setAttribute("aria-expanded", String(open));
});

openConversation(store.current()).finally(() => (document.body.dataset.ready = "true"));
