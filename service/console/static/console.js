// Progressive enhancement only: every page works without this file.
// 1. Move focus to the error summary so screen-reader users hear the problems first.
// 2. A link in the summary focuses its field (or a fieldset's first input), not just scrolls.
// 3. Stop a second click on a button marked data-prevent-double-click from posting twice.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var summary = document.querySelector("[data-module='error-summary']");
    if (summary) {
      summary.focus();
      summary.addEventListener("click", function (event) {
        var link = event.target.closest("a[href^='#']");
        if (!link) { return; }
        var target = document.getElementById(link.getAttribute("href").slice(1));
        if (!target) { return; }
        event.preventDefault();
        var input = target.matches("input, select, textarea") ? target : target.querySelector("input, select, textarea");
        (input || target).focus();
        target.scrollIntoView({ block: "center" });
      });
    }
    document.querySelectorAll("[data-prevent-double-click]").forEach(function (button) {
      var last = 0;
      button.addEventListener("click", function (event) {
        var now = Date.now();
        if (now - last < 1500) { event.preventDefault(); }
        last = now;
      });
    });
  });
})();
