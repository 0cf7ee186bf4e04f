"""The dashboard: server-rendered pages served by the platform API (issue 7).

`app.setup(app, api)` adds the pages (`/`, `/services/{name}`, `/topology`, `/traces`, …) and
`/static/…` to the API's aiohttp application. Pages are HTML rendered on the server from the
Store (`render`), made live by small ES modules in `static/` that read the JSON API under
`/api/v1` with the browser's session cookie (`session`). Charts (uPlot) and the topology graph
(Cytoscape.js) come from npm at install time into `vendor/node_modules` (`assets`); without
them every page still works and shows its tables.
"""
