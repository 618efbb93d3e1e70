// This browser's conversations, kept in localStorage: the list (id, title), the one open, and
// for each reply still running what the page had of it, so a reload picks it up where it was.

const LIST_KEY = "chat.conversations";
const CURRENT_KEY = "chat.current";
const RUNNING_KEY = "chat.running";
const TITLE_LENGTH = 60;

function read(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

const write = (key, value) => localStorage.setItem(key, JSON.stringify(value));

/** [{id, title}], the newest first. */
export const list = () => read(LIST_KEY, []);

export function add(id, firstMessage) {
  if (list().some((c) => c.id === id)) return;
  const title = firstMessage.trim().replace(/\s+/g, " ");
  const short = title.length > TITLE_LENGTH ? `${title.slice(0, TITLE_LENGTH - 1)}…` : title;
  write(LIST_KEY, [{ id, title: short || "(empty)" }, ...list()]);
}

export function remove(id) {
  write(LIST_KEY, list().filter((c) => c.id !== id));
  finished(id);
  if (current() === id) open(null);
}

export const current = () => localStorage.getItem(CURRENT_KEY);

export function open(id) {
  if (id) localStorage.setItem(CURRENT_KEY, id);
  else localStorage.removeItem(CURRENT_KEY);
}

/** The running reply of a conversation: {message, text, lastEventId, stored}, where
 * `stored` is how many messages the history held before this exchange. */
export const running = (id) => read(RUNNING_KEY, {})[id] ?? null;

export function progress(id, reply) {
  write(RUNNING_KEY, { ...read(RUNNING_KEY, {}), [id]: reply });
}

export function finished(id) {
  const all = read(RUNNING_KEY, {});
  delete all[id];
  write(RUNNING_KEY, all);
}
