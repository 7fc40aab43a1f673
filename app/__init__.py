"""hlsrelay: an HLS ingest relay that stores what encoders push in an S3 bucket."""

__version__ = "0.1.0"
