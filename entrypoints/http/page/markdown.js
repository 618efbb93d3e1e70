// A small Markdown renderer that builds DOM nodes: text only ever goes in through
// createTextNode, so no HTML in a message or a reply is ever parsed, let alone run.
// Paragraphs, line breaks, fenced code, `code`, **bold**, *italic*, lists and links
// (http, https and mailto only; anything else stays text).

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const FENCE = /^\s*(```|~~~)(.*)$/;
const ITEM = /^\s*(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/;

function element(tag, ...children) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}

export function safeHref(href) {
  try {
    const url = new URL(href, document.baseURI);
    return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

// `code` first (nothing inside it is Markdown), then links, bold, italic.
const INLINE =
  /`([^`\n]+)`|\[([^\]\n]+)\]\(([^()\s]+)\)|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__|\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<![\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w])/g;

function inline(text) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) nodes.push(...withBreaks(text.slice(last, match.index)));
    const [whole, code, label, href, bold, bold2, italic, italic2] = match;
    if (code !== undefined) nodes.push(element("code", code));
    else if (label !== undefined) {
      const safe = safeHref(href);
      if (safe) {
        const link = element("a", ...inline(label));
        link.href = safe;
        link.rel = "noopener noreferrer";
        link.target = "_blank";
        nodes.push(link);
      } else nodes.push(...withBreaks(whole));
    } else if (bold !== undefined || bold2 !== undefined) {
      nodes.push(element("strong", ...inline(bold ?? bold2)));
    } else nodes.push(element("em", ...inline(italic ?? italic2)));
    last = match.index + whole.length;
  }
  if (last < text.length) nodes.push(...withBreaks(text.slice(last)));
  return nodes;
}

function withBreaks(text) {
  const nodes = [];
  text.split("\n").forEach((line, index) => {
    if (index) nodes.push(document.createElement("br"));
    if (line) nodes.push(document.createTextNode(line));
  });
  return nodes;
}

/** The Markdown text as a fragment of DOM nodes. An unclosed fence (a reply still being
 * written) runs to the end. */
export function render(markdown) {
  const fragment = document.createDocumentFragment();
  const lines = markdown.replace(/\r\n?/g, "\n").split("\n");
  let paragraph = [];
  let list = null;

  const endParagraph = () => {
    if (paragraph.length) fragment.append(element("p", ...inline(paragraph.join("\n"))));
    paragraph = [];
  };
  const endList = () => {
    list = null;
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      endParagraph();
      endList();
      const code = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) code.push(lines[i]);
      const block = element("code", code.join("\n"));
      const language = fence[2].trim();
      if (language) block.dataset.language = language;
      fragment.append(element("pre", block));
      continue;
    }
    const item = line.match(ITEM);
    if (item) {
      endParagraph();
      const tag = item[1] ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== tag) {
        list = element(tag);
        if (tag === "ol" && item[2] !== "1") list.start = Number(item[2]);
        fragment.append(list);
      }
      list.append(element("li", ...inline(item[3])));
      continue;
    }
    if (line.trim() === "") {
      endParagraph();
      endList();
      continue;
    }
    if (list && /^\s+\S/.test(line)) {
      // an indented line goes on with the list's last item
      list.lastElementChild.append(document.createElement("br"), ...inline(line.trim()));
      continue;
    }
    endList();
    paragraph.push(line);
  }
  endParagraph();
  return fragment;
}
