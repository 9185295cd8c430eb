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

  // A client secret from one of our JSON endpoints (a SetupIntent's, or a payment's waiting for the
  // bank); the endpoint's error message otherwise.
  function fetchClientSecret(url, root) {
    return fetch(url, {
      method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf(root) }
    }).then(function (response) {
      return response.json();
    }).then(function (data) {
      if (!data.client_secret) throw new Error(data.error || "");
      return data.client_secret;
    });
  }

  // 3-D Secure: Stripe.js lets the bank challenge the customer for the payment whose client secret
  // `secret` is (or promises), then `settle` runs whatever Stripe.js said, even if it did not load:
  // the server reads the payment's state from Stripe. `opening` runs just before the challenge shows.
  function confirmWithBank(host, secret, settle, opening) {
    Promise.resolve(secret).then(function (clientSecret) {
      return loadStripe(host).then(function (s) {
        if (opening) opening();
        return s.confirmCardPayment(clientSecret);
      });
    }).then(settle, settle);
  }

  // Plan upgrade: the payment's client secret, the bank's challenge, then the form's post.
  function confirmUpgrade(form) {
    var button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    var secret = fetchClientSecret(form.getAttribute("data-authenticate-url"), form);
    confirmWithBank(form, secret, function () { form.submit(); });
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
    fetchClientSecret(dialog.getAttribute("data-card-setup-url"), dialog).then(function (secret) {
      return loadStripe(dialog).then(function (s) {
        return s.confirmCardSetup(secret, { payment_method: { card: cardElement } });
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

  // A pack bought with the card on file that waits for the bank: the challenge, then the dialog's
  // body shows the purchase as the server settled it.
  function confirmPayment(box) {
    var secret = box.getAttribute("data-client-secret");
    var url = box.getAttribute("data-settle-url");
    box.removeAttribute("data-client-secret");
    // Stripe.js shows its challenge over the page: a modal <dialog> would make it inert, so the
    // dialog stays open without being modal meanwhile.
    var modal = dialog.open && dialog.matches(":modal");
    confirmWithBank(dialog, secret, function () {
      if (modal) { dialog.close(); dialog.showModal(); }
      swapBody(url, {});
    }, function () {
      if (modal) { dialog.close(); dialog.show(); }
    });
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
