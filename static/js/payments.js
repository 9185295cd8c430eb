// The dashboard's payment steps that need Stripe.js. The buy dialog: adding a card (card element +
// confirmCardSetup) and 3-D Secure (confirmCardPayment); buying with the card on file is plain htmx.
// The plans page: 3-D Secure for a plan upgrade, then a plain form post that settles it.
(function () {
  "use strict";

  var stripe = null;
  var stripeLoading = null;
  var cardElement = null;

  // host: the element carrying data-stripe-js and data-stripe-key (the dialog, the upgrade form).
  function loadStripe(host) {
    if (stripe) return Promise.resolve(stripe);
    if (!stripeLoading) {
      stripeLoading = new Promise(function (resolve, reject) {
        var script = document.createElement("script");
        script.src = host.getAttribute("data-stripe-js");
        script.onload = function () {
          stripe = window.Stripe(host.getAttribute("data-stripe-key"));
          resolve(stripe);
        };
        script.onerror = function () { stripeLoading = null; reject(new Error("Stripe.js did not load")); };
        document.head.appendChild(script);
      });
    }
    return stripeLoading;
  }

  function csrf(root) {
    var field = root.querySelector("input[name=csrfmiddlewaretoken]") ||
      document.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  // Plan upgrade: fetch the payment's client secret, let the bank challenge the customer, then post
  // the form, whatever Stripe.js said: the server reads the payment's state from Stripe.
  function confirmUpgrade(form) {
    var button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    var finish = function () { form.submit(); };
    fetch(form.getAttribute("data-authenticate-url"), {
      method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf(form) }
    }).then(function (response) {
      return response.json();
    }).then(function (data) {
      if (!data.client_secret) throw new Error(data.error || "");
      return loadStripe(form).then(function (s) { return s.confirmCardPayment(data.client_secret); });
    }).then(finish, finish);
  }

  document.querySelectorAll("form[data-confirm-upgrade]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      confirmUpgrade(form);
    });
    // Straight after "Pay and change plan", the challenge opens without another click.
    if (form.hasAttribute("data-autostart")) confirmUpgrade(form);
  });

  var dialog = document.getElementById("buy-dialog");
  if (!dialog) return;

  function swapBody(url, values) {
    return window.htmx.ajax("POST", url, {
      source: dialog, target: "#buy-body", swap: "innerHTML", values: values,
      headers: { "X-CSRFToken": csrf(dialog) }
    });
  }

  function showCardError(message) {
    var box = dialog.querySelector("[data-card-error]");
    if (!box) return;
    box.textContent = message;
    box.hidden = false;
  }

  function mountCard() {
    var host = dialog.querySelector("[data-card-element]");
    if (!host || host.childElementCount) return;
    loadStripe(dialog).then(function (s) {
      if (cardElement) cardElement.destroy();
      var elements = s.elements();
      cardElement = elements.create("card");
      cardElement.mount(host);
      // localstripe's stand-in inputs have no labels; name them (the real element is an iframe).
      host.querySelectorAll("input").forEach(function (input) {
        if (!input.getAttribute("aria-label")) input.setAttribute("aria-label", input.getAttribute("placeholder") || "card");
      });
    }, function () {
      showCardError(dialog.getAttribute("data-stripe-failed") || "Stripe.js did not load.");
    });
  }

  function saveCard(form) {
    var button = form.querySelector("[data-card-save]");
    if (button) button.disabled = true;
    var done = function () { if (button) button.disabled = false; };
    fetch(dialog.getAttribute("data-card-setup-url"), {
      method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf(dialog) }
    }).then(function (response) {
      return response.json();
    }).then(function (data) {
      if (!data.client_secret) throw new Error(data.error || "");
      return loadStripe(dialog).then(function (s) {
        return s.confirmCardSetup(data.client_secret, { payment_method: { card: cardElement } });
      });
    }).then(function (result) {
      if (result.error) {
        showCardError(result.error.message || String(result.error));
        done();
        return;
      }
      var pm = result.setupIntent.payment_method;
      swapBody(form.getAttribute("action"), { payment_method: typeof pm === "string" ? pm : pm.id });
    }).catch(function (error) {
      showCardError(error.message || dialog.getAttribute("data-stripe-failed") || "");
      done();
    });
  }

  function confirmPayment(box) {
    var secret = box.getAttribute("data-client-secret");
    var url = box.getAttribute("data-settle-url");
    box.removeAttribute("data-client-secret");
    // Stripe.js shows its challenge over the page: a modal <dialog> would make it inert, so the
    // dialog stays open without being modal meanwhile.
    var modal = dialog.open && dialog.matches(":modal");
    var settle = function () {
      if (modal) { dialog.close(); dialog.showModal(); }
      // Whatever Stripe.js says, the server asks Stripe for the payment's state and settles it.
      swapBody(url, {});
    };
    loadStripe(dialog).then(function (s) {
      if (modal) { dialog.close(); dialog.show(); }
      return s.confirmCardPayment(secret);
    }).then(settle, settle);
  }

  function init() {
    mountCard();
    var box = dialog.querySelector("[data-confirm-payment][data-client-secret]");
    if (box) confirmPayment(box);
  }

  // The confirm button names the amount of the chosen pack, and the order summary shows its rows.
  dialog.addEventListener("change", function (event) {
    var radio = event.target.closest("input[data-pay-label]");
    if (!radio) return;
    var button = dialog.querySelector("[data-pay-button]");
    if (button) button.textContent = radio.getAttribute("data-pay-label");
    dialog.querySelectorAll("[data-pack-terms]").forEach(function (row) {
      row.hidden = row.getAttribute("data-pack-terms") !== radio.value;
    });
  });

  dialog.addEventListener("submit", function (event) {
    var form = event.target.closest("[data-card-form]");
    if (!form) return;
    event.preventDefault();
    saveCard(form);
  });

  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail && event.detail.target && event.detail.target.id === "buy-body") init();
  });

  document.addEventListener("click", function (event) {
    var opener = event.target.closest("[data-open-dialog='buy-dialog']");
    if (opener) init();
  });
})();
