"""`streamsr view`: deep-zoom tiles of a job dir (read through the job store) and the HTTP server on
127.0.0.1, with its static page in static/.
"""
