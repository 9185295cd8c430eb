// Small progressive enhancements for the dashboard. Every page works without them.
(function () {
  "use strict";

  // Open <dialog>s from buttons: <button data-open-dialog="id">.
  document.addEventListener("click", function (event) {
    var opener = event.target.closest("[data-open-dialog]");
    if (opener) {
      var dialog = document.getElementById(opener.getAttribute("data-open-dialog"));
      if (dialog && typeof dialog.showModal === "function") {
        dialog.showModal();
      }
      return;
    }
    var copier = event.target.closest("[data-copy]");
    if (copier) {
      var field = document.querySelector(copier.getAttribute("data-copy"));
      if (!field) return;
      var done = function () {
        var status = document.getElementById("copy-status");
        copier.textContent = copier.getAttribute("data-copied") || "Copied";
        if (status) status.textContent = copier.textContent;
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () { field.select(); document.execCommand("copy"); done(); });
      } else {
        field.select();
        document.execCommand("copy");
        done();
      }
    }
  });

  // Ask before destructive forms: <form data-confirm="question">.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // Tell the server the browser's time zone once, while the account still says UTC.
  function postTimezone() {
    var url = document.body.getAttribute("data-timezone-url");
    if (!url || !window.Intl || !window.fetch) return;
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (!zone) return;
    var token = document.querySelector("input[name=csrfmiddlewaretoken]");
    var body = new URLSearchParams({ timezone: zone });
    fetch(url, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-CSRFToken": token ? token.value : "" }
    }).then(function (response) {
      return response.ok ? response.json() : null;
    }).then(function (data) {
      if (data && data.changed) window.location.reload();
    }).catch(function () { /* the next page load tries again */ });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", postTimezone);
  } else {
    postTimezone();
  }
})();
