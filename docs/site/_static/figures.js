// Figures are drawn wider than the text column (up to ~1900 px shown at ~780 px): a click opens the
// figure at its full size.
document.addEventListener("DOMContentLoaded", () => {
  for (const img of document.querySelectorAll("article .cell_output img")) {
    const link = document.createElement("a");
    link.href = img.getAttribute("src");
    link.title = "open the figure at full size";
    link.className = "figure-full-size";
    img.replaceWith(link);
    link.appendChild(img);
  }
});
