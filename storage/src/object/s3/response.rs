//! Reading S3's answers: error bodies, listings, batch-delete results,
//! dates and `Content-Range`, turned into [`ObjectError`]s and
//! [`ObjectInfo`]s.
//!
//! Pure functions of bytes and strings, called on the shard that received
//! the answer. XML that `rusty-s3` has a parser for (listings, multipart
//! and delete results) goes through it; only the `<Error>` document is read
//! here. Must never do I/O, and never panic on what a server sends.

use rusty_s3::actions::{DeleteObjectsResponse, ListObjectsV2};

use crate::object::{ObjectError, ObjectInfo};

/// The `<Error>` document S3 sends with a failed request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct S3ErrorBody {
    pub code: String,
    pub message: String,
}

/// Reads `<Code>` and `<Message>` from an S3 error document; `None` when
/// the body is not one (empty, HTML from a proxy, cut short).
pub fn parse_error_body(body: &[u8]) -> Option<S3ErrorBody> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Error")?;
    let doc = &text[start..];
    let code = tag_text(doc, "Code")?;
    let message = tag_text(doc, "Message").unwrap_or_default();
    Some(S3ErrorBody {
        code: unescape(code),
        message: unescape(message),
    })
}

/// The error for a non-success answer: `Http { status, "Code: Message" }`,
/// or the status line alone when the body says nothing.
pub fn error_from_answer(status: u16, body: &[u8]) -> ObjectError {
    let message = match parse_error_body(body) {
        Some(e) if e.message.is_empty() => e.code,
        Some(e) => format!("{}: {}", e.code, e.message),
        None => status_text(status).to_string(),
    };
    ObjectError::Http { status, message }
}

/// One page of a `ListObjectsV2` listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Keys with the store's prefix taken off.
    pub objects: Vec<ObjectInfo>,
    /// Where the next page starts; `None` on the last page.
    pub next_token: Option<String>,
}

/// Parses a listing page with `rusty-s3`'s parser (which also decodes the
/// url-encoded keys) and strips `root` (the store's prefix) from each key.
pub fn parse_list_page(xml: &str, root: &str) -> Result<ListPage, ObjectError> {
    let page = ListObjectsV2::parse_response(xml)
        .map_err(|e| ObjectError::Invalid(format!("ListObjectsV2 answer: {e}")))?;
    let mut objects = Vec::with_capacity(page.contents.len());
    for item in page.contents {
        let Some(key) = item.key.strip_prefix(root) else {
            return Err(ObjectError::Invalid(format!(
                "listed key {:?} is outside the prefix {root:?}",
                item.key
            )));
        };
        objects.push(ObjectInfo {
            key: key.to_string(),
            size: item.size.unwrap_or(0),
            last_modified_ms: item.last_modified.as_deref().and_then(parse_iso8601_ms),
        });
    }
    Ok(ListPage {
        objects,
        next_token: page.next_continuation_token,
    })
}

/// A key that `DeleteObjects` did not delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteFailure {
    pub key: String,
    pub code: String,
    pub message: String,
}

/// The keys a `DeleteObjects` answer reports as not deleted. `NoSuchKey`
/// is left out: a key that is already gone is what the caller wanted.
pub fn parse_delete_failures(xml: &str) -> Result<Vec<DeleteFailure>, ObjectError> {
    let answer = DeleteObjectsResponse::parse(xml)
        .map_err(|e| ObjectError::Invalid(format!("DeleteObjects answer: {e}")))?;
    Ok(answer
        .errors
        .into_iter()
        .filter(|e| e.code != "NoSuchKey")
        .map(|e| DeleteFailure {
            key: e.key,
            code: e.code,
            message: e.message,
        })
        .collect())
}

/// The HTTP status that matches an S3 error code in a batch answer, so a
/// per-key failure is retried (or not) like the same error on its own.
pub fn status_of_code(code: &str) -> u16 {
    match code {
        "SlowDown" | "ServiceUnavailable" => 503,
        "InternalError" => 500,
        "RequestTimeout" => 408,
        "AccessDenied" => 403,
        _ => 400,
    }
}

/// `2024-05-01T12:00:00.000Z` (listings) as milliseconds since the epoch.
pub fn parse_iso8601_ms(s: &str) -> Option<i64> {
    s.trim()
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// `Wed, 01 May 2024 12:00:00 GMT` (the `Last-Modified` header) as
/// milliseconds since the epoch.
pub fn parse_http_date_ms(s: &str) -> Option<i64> {
    jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(s.trim())
        .ok()
        .map(|t| t.as_millisecond())
}

/// A `Content-Range: bytes first-last/total` header (`total` may be `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    /// Inclusive, as on the wire.
    pub last: u64,
    pub total: Option<u64>,
}

impl ContentRange {
    /// The half-open byte range it describes.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.first..self.last.saturating_add(1)
    }
}

pub fn parse_content_range(s: &str) -> Option<ContentRange> {
    let rest = s.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < first {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some(ContentRange { first, last, total })
}

/// The text between `<tag>` and `</tag>`, first occurrence.
fn tag_text<'a>(doc: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = doc.find(&open)? + open.len();
    let len = doc[start..].find(&close)?;
    Some(&doc[start..start + len])
}

/// Undoes XML's five predefined entities and numeric character references;
/// anything else is kept as it is.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';') else { break };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => numeric_reference(entity),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn numeric_reference(entity: &str) -> Option<char> {
    let num = entity.strip_prefix('#')?;
    let code = match num.strip_prefix(['x', 'X']) {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => num.parse().ok()?,
    };
    char::from_u32(code)
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "unexpected status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_of_slowdown() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>1</RequestId></Error>"#;
        let e = parse_error_body(body).unwrap();
        assert_eq!(e.code, "SlowDown");
        assert_eq!(e.message, "Please reduce your request rate.");
        assert_eq!(
            error_from_answer(503, body),
            ObjectError::Http {
                status: 503,
                message: "SlowDown: Please reduce your request rate.".into()
            }
        );
    }

    #[test]
    fn error_body_entities_and_garbage() {
        let body = b"<Error><Code>InvalidArgument</Code><Message>a &lt;b&gt; &amp; &#39;c&#x27; &bogus; &</Message></Error>";
        let e = parse_error_body(body).unwrap();
        assert_eq!(e.message, "a <b> & 'c' &bogus; &");
        assert_eq!(parse_error_body(b""), None);
        assert_eq!(parse_error_body(b"<html>bad gateway</html>"), None);
        assert_eq!(parse_error_body(b"<Error><Code>Slow"), None);
        assert_eq!(parse_error_body(&[0xff, 0xfe, b'<']), None);
        assert_eq!(
            error_from_answer(502, b"<html/>"),
            ObjectError::Http {
                status: 502,
                message: "Bad Gateway".into()
            }
        );
        let code_only = b"<Error><Code>NoSuchUpload</Code></Error>";
        assert_eq!(
            error_from_answer(404, code_only),
            ObjectError::Http {
                status: 404,
                message: "NoSuchUpload".into()
            }
        );
    }

    #[test]
    fn list_page_strips_the_prefix_and_reads_dates() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>root/</Prefix><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType>
  <IsTruncated>true</IsTruncated><KeyCount>2</KeyCount>
  <Contents><Key>root/a%2Bb+c</Key><LastModified>2024-05-01T12:00:00.000Z</LastModified><ETag>"x"</ETag><Size>10</Size><StorageClass>STANDARD</StorageClass></Contents>
  <Contents><Key>root/d/e</Key><LastModified>2024-05-01T12:00:01.500Z</LastModified><ETag>"y"</ETag><Size>0</Size><StorageClass>STANDARD</StorageClass></Contents>
  <NextContinuationToken>tok+en/=</NextContinuationToken>
</ListBucketResult>"#;
        let page = parse_list_page(xml, "root/").unwrap();
        assert_eq!(
            page.objects,
            vec![
                ObjectInfo {
                    key: "a+b c".into(),
                    size: 10,
                    last_modified_ms: Some(1_714_564_800_000)
                },
                ObjectInfo {
                    key: "d/e".into(),
                    size: 0,
                    last_modified_ms: Some(1_714_564_801_500)
                },
            ]
        );
        assert_eq!(page.next_token.as_deref(), Some("tok+en/="));
        assert!(parse_list_page(xml, "other/").is_err());
        assert!(parse_list_page("<nope/>", "").is_err());
    }

    #[test]
    fn delete_failures_ignore_missing_keys() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Deleted><Key>a</Key></Deleted>
  <Error><Key>b</Key><Code>NoSuchKey</Code><Message>gone</Message></Error>
  <Error><Key>c</Key><Code>InternalError</Code><Message>try again</Message></Error>
</DeleteResult>"#;
        let failures = parse_delete_failures(xml).unwrap();
        assert_eq!(
            failures,
            vec![DeleteFailure {
                key: "c".into(),
                code: "InternalError".into(),
                message: "try again".into()
            }]
        );
        assert_eq!(status_of_code("InternalError"), 500);
        assert_eq!(status_of_code("SlowDown"), 503);
        assert_eq!(status_of_code("AccessDenied"), 403);
    }

    #[test]
    fn dates() {
        assert_eq!(
            parse_http_date_ms("Wed, 01 May 2024 12:00:00 GMT"),
            Some(1_714_564_800_000)
        );
        assert_eq!(
            parse_iso8601_ms("2024-05-01T12:00:00Z"),
            Some(1_714_564_800_000)
        );
        assert_eq!(parse_http_date_ms("yesterday"), None);
        assert_eq!(parse_iso8601_ms(""), None);
    }

    #[test]
    fn content_range() {
        let r = parse_content_range("bytes 100-199/1000").unwrap();
        assert_eq!(r.range(), 100..200);
        assert_eq!(r.total, Some(1000));
        assert_eq!(
            parse_content_range("bytes 0-0/*"),
            Some(ContentRange {
                first: 0,
                last: 0,
                total: None
            })
        );
        for bad in [
            "",
            "bytes",
            "bytes 5-4/10",
            "items 0-1/2",
            "bytes a-b/c",
            "bytes */10",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
