// The dashboard's only script: the checkpoint step slider of a train job's page.
// Without it the page still works: the step links below the grid load ?step=N.
(function () {
  var slider = document.getElementById("step-slider");
  var grid = document.getElementById("grid");
  if (!slider || !grid) return;
  var links = Array.prototype.slice.call(document.querySelectorAll("#step-links a"));
  var input = slider.querySelector("input");
  var label = document.getElementById("step-label");
  if (links.length < 2) return;
  slider.hidden = false;
  input.addEventListener("input", function () {
    var link = links[Number(input.value)];
    grid.src = link.dataset.src;
    grid.alt = "sample grid at step " + link.dataset.step;
    label.textContent = link.dataset.step;
    links.forEach(function (a) { a.classList.toggle("on", a === link); });
  });
})();
