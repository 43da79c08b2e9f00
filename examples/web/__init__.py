"""A web page that runs a trained ST-CNN in the browser (onnxruntime-web, WebAssembly).

    npm ci --prefix examples/web                    # onnxruntime-web, pinned by its lockfile
    python -m examples.web --model artifacts/quickstart/st_cnn.keras --out artifacts/web
    python -m http.server --directory artifacts/web 8000     # then open http://localhost:8000

See `__main__.py` for what the site holds; `static/` is the page itself.
"""
