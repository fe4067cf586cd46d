"""Rendering of reports: rich tables on stdout, JSON documents, progress on stderr."""
