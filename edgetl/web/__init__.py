"""The device check in a browser: `edgetl serve RUN` and `edgetl bundle RUN --web`.

site.py builds the page's folder for a run (models, the held-out images as input tensors,
references), vendor.py brings the pinned JavaScript runtimes, server.py serves it and takes the
results back, webbundle.py zips it for static hosting. The page itself is in page/."""
