"""Everything that talks to the Docker engine. The only package that imports `docker`."""
