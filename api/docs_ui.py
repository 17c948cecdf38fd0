"""Swagger UI's files for `/docs`, served by the app itself (issue #10).

flask-smorest renders `/docs` from its own template, which loads
`{OPENAPI_SWAGGER_UI_URL}swagger-ui-bundle.js` and `swagger-ui.css`. Pointing that
URL at this blueprint serves the files of the `swagger-ui-bundle` package (PyPI,
maintained with connexion) instead of a CDN, so the page works on a network with
no way out. The page also gets a Content-Security-Policy that lets the browser
fetch nothing but this origin.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, request, send_from_directory
from swagger_ui_bundle import swagger_ui_path

# The directory is named after the Swagger UI release (swagger-ui-4.15.5), so the
# asset URLs change with each release and the files can be cached as immutable.
RELEASE = swagger_ui_path.name
ASSETS_URL = f"/docs/{RELEASE}/"

# Only what flask-smorest's page loads (plus source maps and icons): the package's
# own index.html/swagger-initializer.js would point a browser at petstore.swagger.io.
ASSETS = frozenset({
    "swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
    "swagger-ui.css.map", "swagger-ui-bundle.js.map", "swagger-ui-standalone-preset.js.map",
    "favicon-16x16.png", "favicon-32x32.png",
})
ASSET_MAX_AGE = 365 * 24 * 3600

# flask-smorest's page has one inline <script> (its config); Swagger UI draws its
# icons from data: URIs. Everything else, including "Try it out", is this origin.
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self'; connect-src 'self'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_ENDPOINT = "api-docs.openapi_swagger_ui"  # flask-smorest's /docs view

blp = Blueprint("docs_ui", __name__)


@blp.get(f"{ASSETS_URL}<filename>")
def asset(filename: str) -> Response:
    if filename not in ASSETS:
        abort(404)
    response = send_from_directory(swagger_ui_path, filename, max_age=ASSET_MAX_AGE)
    response.cache_control.immutable = True
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blp.after_app_request
def _docs_page_headers(response: Response) -> Response:
    if request.endpoint == DOCS_ENDPOINT:
        response.headers["Content-Security-Policy"] = DOCS_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
    return response
