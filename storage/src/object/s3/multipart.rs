//! Multipart uploads: the body cut into parts without copying, several
//! parts in flight at once, the upload completed in part order, and aborted
//! when it fails for good (S3 keeps, and bills, the parts of an upload that
//! is neither completed nor aborted).
//!
//! Runs on the shard that owns the [`S3Store`]; the parts in flight are
//! futures polled together on that shard, not tasks on other cores. Must
//! never copy the payload or leave an upload behind without trying to
//! abort it.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hyper::Method;
use rusty_s3::actions::CompleteMultipartUploadResponse;
use rusty_s3::S3Action;

use super::config::effective_part_size;
use super::http::HttpRequest;
use super::response::{error_from_answer, parse_error_body, status_of_code};
use super::{success, S3Store, PRESIGN_FOR};
use crate::object::{body_len, ObjectBody, ObjectError};

/// Reads a 200 answer to CompleteMultipartUpload. S3 may answer 200 and
/// still fail (the body is then an `<Error>`, sent after whitespace that kept
/// the connection alive). moto names the result `...Response` where AWS says
/// `...Result`, which `rusty-s3`'s parser rejects, so any result document
/// that is not an error counts as done. A body that is neither (cut short
/// behind a 200) is retried: completing again is harmless.
fn completion_result(full: &str, body: &[u8]) -> Result<(), ObjectError> {
    if let Some(e) = parse_error_body(body) {
        return Err(ObjectError::Http {
            status: status_of_code(&e.code),
            message: format!("{}: {}", e.code, e.message),
        });
    }
    let text = String::from_utf8_lossy(body);
    if CompleteMultipartUploadResponse::parse(&text).is_ok()
        || text.contains("<CompleteMultipartUploadResponse")
    {
        return Ok(());
    }
    Err(ObjectError::Io(format!(
        "CompleteMultipartUpload of {full}: 200 without a result"
    )))
}

/// Cuts `body` into consecutive parts of `part_size` bytes (the last one
/// shorter) by slicing the chunks: the parts share the caller's memory.
pub fn split_parts(body: &ObjectBody, part_size: usize) -> Vec<ObjectBody> {
    let part_size = part_size.max(1);
    let mut parts = Vec::new();
    let mut current: ObjectBody = Vec::new();
    let mut room = part_size;
    for chunk in body {
        let mut chunk = chunk.clone();
        while !chunk.is_empty() {
            let take = room.min(chunk.len());
            current.push(chunk.split_to(take));
            room -= take;
            if room == 0 {
                parts.push(std::mem::take(&mut current));
                room = part_size;
            }
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

impl S3Store {
    pub(super) async fn multipart_put(
        &self,
        key: &str,
        body: ObjectBody,
        part_size: usize,
    ) -> Result<(), ObjectError> {
        let total = body_len(&body);
        let part_size = effective_part_size(part_size, self.cfg.multipart_part_bytes, total);
        let full = self.full_key(key);
        if total <= part_size as u64 {
            return self.put_object(&full, body).await;
        }
        let upload_id = self.create_upload(&full).await?;
        let result = self
            .upload_and_complete(&full, &upload_id, &body, part_size, total)
            .await;
        match result {
            Ok(()) => {
                self.bump(|s| {
                    s.puts += 1;
                    s.bytes_put += total;
                });
                Ok(())
            }
            Err(e) => {
                self.abort_upload(&full, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn upload_and_complete(
        &self,
        full: &str,
        upload_id: &str,
        body: &ObjectBody,
        part_size: usize,
        total: u64,
    ) -> Result<(), ObjectError> {
        let parts = split_parts(body, part_size);
        // `buffered` keeps up to `multipart_concurrency` parts in flight and
        // yields their ETags in part order, as CompleteMultipartUpload
        // wants them. On the first part that fails for good the others are
        // dropped (their connections closed) and the upload is aborted.
        let etags: Vec<String> = futures::stream::iter(parts.into_iter().enumerate())
            .map(|(i, part)| self.upload_part(full, upload_id, i + 1, part))
            .buffered(self.cfg.multipart_concurrency)
            .try_collect()
            .await?;
        self.complete_upload(full, upload_id, &etags, total).await
    }

    async fn upload_part(
        &self,
        full: &str,
        upload_id: &str,
        number: usize,
        part: ObjectBody,
    ) -> Result<String, ObjectError> {
        let number = u16::try_from(number)
            .map_err(|_| ObjectError::Invalid(format!("part number {number} is over 10 000")))?;
        self.retrying("upload_part", full, |_| {
            let part = part.clone();
            async move {
                let url = self
                    .bucket
                    .upload_part(Some(&self.credentials), full, number, upload_id)
                    .sign(PRESIGN_FOR);
                let resp = self
                    .send(HttpRequest::new(Method::PUT, url).body(part))
                    .await?;
                success(&resp)?;
                resp.header("etag").map(str::to_string).ok_or_else(|| {
                    ObjectError::Invalid(format!("UploadPart {number} of {full}: no ETag"))
                })
            }
        })
        .await
    }

    async fn complete_upload(
        &self,
        full: &str,
        upload_id: &str,
        etags: &[String],
        total: u64,
    ) -> Result<(), ObjectError> {
        self.retrying("complete_multipart", full, |tried| async move {
            let action = self.bucket.complete_multipart_upload(
                Some(&self.credentials),
                full,
                upload_id,
                etags.iter().map(String::as_str),
            );
            let url = action.sign(PRESIGN_FOR);
            let body = Bytes::from(action.body());
            let resp = self
                .send(HttpRequest::new(Method::POST, url).body(vec![body]))
                .await?;
            if resp.status == 404 && tried > 0 {
                // An earlier attempt may have completed the upload and only
                // its answer was lost: then the object is there, whole.
                return self.completed_before(full, total, &resp.body).await;
            }
            success(&resp)?;
            completion_result(full, &resp.body)
        })
        .await
    }

    /// Whether a retried CompleteMultipartUpload that found no upload means
    /// an earlier attempt completed it: the object exists with the size of
    /// the whole body.
    async fn completed_before(
        &self,
        full: &str,
        total: u64,
        body: &[u8],
    ) -> Result<(), ObjectError> {
        let answer = error_from_answer(404, body);
        let no_upload = parse_error_body(body).is_some_and(|e| e.code == "NoSuchUpload");
        if !no_upload {
            return Err(answer);
        }
        match self.head_object(full).await? {
            Some(info) if info.size == total => {
                tracing::info!(
                    key = full,
                    "multipart upload was completed by an earlier attempt"
                );
                Ok(())
            }
            _ => Err(answer),
        }
    }

    /// Best effort: a failure here is logged, and the original error is
    /// what the caller sees. A bucket lifecycle rule should clean up what
    /// is left.
    async fn abort_upload(&self, full: &str, upload_id: &str) {
        let result = self
            .retrying("abort_multipart", full, |_| async move {
                let url = self
                    .bucket
                    .abort_multipart_upload(Some(&self.credentials), full, upload_id)
                    .sign(PRESIGN_FOR);
                let resp = self.send(HttpRequest::new(Method::DELETE, url)).await?;
                if resp.status == 404 {
                    return Ok(());
                }
                success(&resp)
            })
            .await;
        if let Err(e) = result {
            tracing::error!(key = full, upload_id, error = %e, "could not abort multipart upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn concat(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn completion_answers() {
        let aws = br#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Location>l</Location><Bucket>b</Bucket><Key>k</Key><ETag>"e-2"</ETag></CompleteMultipartUploadResult>"#;
        let moto = br#"<?xml version="1.0" encoding="utf-8"?>
<CompleteMultipartUploadResponse xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Location>l</Location><Bucket>b</Bucket><Key>k</Key><ETag>"e-2"</ETag></CompleteMultipartUploadResponse>"#;
        let late_error = b"\n  \n<Error><Code>InternalError</Code><Message>m</Message></Error>";
        assert_eq!(completion_result("k", aws), Ok(()));
        assert_eq!(completion_result("k", moto), Ok(()));
        assert_eq!(
            completion_result("k", late_error),
            Err(ObjectError::Http {
                status: 500,
                message: "InternalError: m".into()
            })
        );
        assert!(matches!(
            completion_result("k", b"  "),
            Err(ObjectError::Io(_))
        ));
    }

    #[test]
    fn parts_share_the_callers_memory() {
        let a = Bytes::from(vec![1u8; 7]);
        let b = Bytes::from(vec![2u8; 5]);
        let parts = split_parts(&vec![a.clone(), b.clone()], 4);
        let sizes: Vec<u64> = parts.iter().map(body_len).collect();
        assert_eq!(sizes, vec![4, 4, 4]);
        assert_eq!(parts[0][0].as_ptr(), a.as_ptr());
        assert_eq!(parts[1][1].as_ptr(), b.as_ptr());
        assert!(split_parts(&vec![], 4).is_empty());
        assert!(split_parts(&vec![Bytes::new()], 4).is_empty());
    }

    proptest! {
        #[test]
        fn parts_rebuild_the_body(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 0..8),
            part_size in 1usize..40,
        ) {
            let body: ObjectBody = chunks.iter().cloned().map(Bytes::from).collect();
            let parts = split_parts(&body, part_size);
            let whole: Vec<u8> = chunks.concat();
            let rebuilt: Vec<u8> = parts.iter().flat_map(|p| concat(p)).collect();
            prop_assert_eq!(rebuilt, whole.clone());
            for (i, p) in parts.iter().enumerate() {
                let len = body_len(p) as usize;
                if i + 1 < parts.len() {
                    prop_assert_eq!(len, part_size);
                } else {
                    prop_assert!(len > 0 && len <= part_size);
                }
            }
            prop_assert_eq!(parts.len(), whole.len().div_ceil(part_size));
        }
    }
}
