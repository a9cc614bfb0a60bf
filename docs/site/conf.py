# Sphinx configuration of the site of the executed notebooks (`make site`; sources laid out by
# docs/site/build.py, which runs Sphinx with this folder as its configuration).
#
# Why Sphinx + myst-nb + sphinx-book-theme (the parts of Jupyter Book 1): it is made for computational
# documents, renders the stored outputs of an .ipynb (figures, HTML and Markdown tables) with
# execution switched off, installs from PyPI as plain wheels (Quarto's PyPI package downloads Quarto at
# install time), and brings navigation and a client-side search index with no server. mkdocs-jupyter
# was the alternative; Sphinx's toctree and search are the more maintained pair.
project = "Gradience"
author = "Gradience"
copyright = "Gradience"
extensions = ["myst_nb"]
root_doc = "index"  # the synthesis notebook (build.py copies it to index.ipynb)
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]

nb_execution_mode = "off"  # never re-run: the notebooks are the pipeline's executed outputs
nb_render_markdown_format = "gfm"  # display(Markdown(...)) outputs: the scoreboard and Findings tables
nb_merge_streams = True
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # notebooks may skip a heading level

html_theme = "sphinx_book_theme"
html_title = "Gradience: the executed study"
html_static_path = ["_static"]
html_js_files = ["figures.js"]  # a click on a figure opens it at full size
html_css_files = ["figures.css"]
html_copy_source = True  # the theme's download button offers each page's executed .ipynb (_sources/)
# an explicit mode: left empty, pydata-sphinx-theme logs "Got invalid theme mode" to the console; light
# because the figures have white backgrounds
html_context = {"default_mode": "light"}
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "home_page_in_toc": True,
}
