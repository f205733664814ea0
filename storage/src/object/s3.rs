//! S3-compatible backend (being written on the `s3` branch).
