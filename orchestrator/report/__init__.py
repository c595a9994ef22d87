"""`orch report`: a self-contained static site of the runs (index, one page per run, one per experiment).

`collect` reads run folders into redacted JSON-able data, `pages` turns data into HTML shells,
`site` writes the folder atomically; `static/` holds the page script and the vendored chart
library (uPlot, MIT). The site needs no server and fetches nothing: open `index.html` from disk.
"""
