"""The ``histo`` command line: the edge where arguments become typed configs."""
