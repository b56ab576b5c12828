// The templates page's preview, as you type: the form is sent as a Preview (nothing saved)
// a moment after the last keystroke, and the page's preview is replaced by the answer's.
// Without the script, the Preview button does the same.
(function () {
  "use strict";
  var form = document.querySelector("form[data-preview]");
  var area = document.getElementById("preview-area");
  if (!form || !area || !window.fetch || !window.DOMParser) {
    return;
  }
  var timer = null;
  var sent = 0;
  function preview() {
    var data = new URLSearchParams(new FormData(form));
    data.set("action", "preview");
    sent += 1;
    var mine = sent;
    // (`form.action` would be the buttons named "action")
    fetch(form.getAttribute("action"), { method: "POST", body: data, credentials: "same-origin" })
      .then(function (answer) {
        return answer.text();
      })
      .then(function (html) {
        if (mine !== sent) {
          return; // a later keystroke's preview is on its way
        }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("preview-area");
        if (fresh) {
          area.innerHTML = fresh.innerHTML;
        }
      });
  }
  form.elements.templates.addEventListener("input", function () {
    window.clearTimeout(timer);
    timer = window.setTimeout(preview, 300);
  });
})();
