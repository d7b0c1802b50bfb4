//! Reading a `multipart/form-data` upload: the one media file streamed into the store
//! ([`DataDir::begin_upload`](crate::store::DataDir::begin_upload)) chunk by chunk, never
//! held whole in memory, under the `--max-upload-mb` limit; the other fields as short text.
//! Used by `POST /api/tasks` (REST) and the OpenAI-compatible `/v1/audio/*` routes.

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap};

use super::Shared;
use crate::store::{StoreError, StoredUpload};

/// Longest accepted text field (model, options JSON, prompt…), in bytes.
const MAX_FIELD: usize = 64 * 1024;

/// A form read by [`read_form`].
#[derive(Debug, Default)]
pub struct UploadForm {
    /// The file field: the stored bytes and the file name the client gave (may be empty).
    pub file: Option<(StoredUpload, String)>,
    /// The other fields, in order, as text.
    pub fields: Vec<(String, String)>,
}

impl UploadForm {
    /// The value of the last field named `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The values of every field named `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a form could not be read; each renders as its route's error format.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    /// The file is larger than the limit (413).
    #[error(
        "the uploaded file is larger than the server's limit of {} MiB (--max-upload-mb)",
        limit / (1024 * 1024)
    )]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request is not a well-formed form, or a field is wrong (400); names the field.
    #[error("{message}")]
    Bad {
        /// The field at fault, when one is.
        field: Option<&'static str>,
        /// One sentence.
        message: String,
    },
    /// The upload could not be stored (503; disk full or IO).
    #[error("cannot store the upload: {0}")]
    Store(#[from] StoreError),
}

impl FormError {
    fn bad(field: Option<&'static str>, message: impl Into<String>) -> Self {
        FormError::Bad {
            field,
            message: message.into(),
        }
    }
}

/// True when the request's `Content-Type` is `multipart/form-data`.
pub fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// Reads the multipart form of `req`: the field `file_field` is written to the store as it
/// arrives (at most `st.opts.max_upload` bytes: a larger `Content-Length` is refused before
/// anything is read, a larger stream as soon as it passes the limit, and the partial file is
/// removed); other fields are read as UTF-8 text of at most 64 KiB. An empty file or a second
/// file is refused.
///
/// Errors: [`FormError`].
pub async fn read_form(
    st: &Shared,
    req: Request,
    file_field: &str,
) -> Result<UploadForm, FormError> {
    let limit = st.opts.max_upload;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The form's own fields and boundaries come on top of the file: allow 1 MiB of them.
    if declared.is_some_and(|n| n > limit.saturating_add(1 << 20)) {
        return Err(FormError::TooLarge { limit });
    }
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| FormError::bad(None, format!("not a multipart form: {}", e.body_text())))?;
    let mut out = UploadForm::default();
    let multipart_error = |e: axum::extract::multipart::MultipartError| {
        FormError::bad(None, format!("malformed multipart form: {}", e.body_text()))
    };
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        if name == file_field {
            if out.file.is_some() {
                return Err(FormError::bad(
                    Some("file"),
                    "only one file per request: the form has two file fields",
                ));
            }
            let client_name = field.file_name().unwrap_or("").to_string();
            let mut sink = st.data.begin_upload().await?;
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                if sink.size() + chunk.len() as u64 > limit {
                    return Err(FormError::TooLarge { limit });
                }
                sink.write(&chunk).await?;
            }
            if sink.size() == 0 {
                return Err(FormError::bad(Some("file"), "the uploaded file is empty"));
            }
            let stored = sink.finish(&client_name).await?;
            out.file = Some((stored, client_name));
        } else {
            let mut text = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                if text.len() + chunk.len() > MAX_FIELD {
                    return Err(FormError::bad(
                        None,
                        format!("the form field {name:?} is longer than 64 KiB"),
                    ));
                }
                text.extend_from_slice(&chunk);
            }
            let text = String::from_utf8(text).map_err(|_| {
                FormError::bad(None, format!("the form field {name:?} is not UTF-8 text"))
            })?;
            out.fields.push((name, text));
        }
    }
    Ok(out)
}
