//! S3 PersistBackend for tidemark (aws-sdk-s3)
