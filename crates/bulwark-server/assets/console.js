// Bulwark's console: times in the browser's time zone. Served from the server itself (the
// pages' Content-Security-Policy allows no inline script).
"use strict";
function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) {
      t.textContent = d.toLocaleString();
      t.title = t.getAttribute("datetime");
    }
  }
}
document.addEventListener("DOMContentLoaded", () => localTimes(document));
document.addEventListener("htmx:afterSwap", (e) => localTimes(e.detail.elt.parentNode || document));
// A button that copies the text of the element it names (a join token shown once).
document.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-copy]");
  if (!b) return;
  const text = document.getElementById(b.dataset.copy).textContent;
  navigator.clipboard.writeText(text).then(() => { b.textContent = "Copied"; }, () => { b.textContent = "Select and copy it"; });
});
