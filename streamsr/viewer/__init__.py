"""`streamsr view`: deep-zoom tiles (tiles.py), a job dir read through JobDir (job.py), what a path shows
(views.py) and the HTTP server on 127.0.0.1 (server.py), with its static page in static/.
"""
