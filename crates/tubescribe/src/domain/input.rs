//! What a user may submit: a YouTube video URL (or bare video id), a local
//! media file, or a direct media URL on an operator-allowed host.
//!
//! This module owns the *validation and normalization* of user input before
//! anything reaches yt-dlp or the queue. YouTube input is always reduced to
//! the 11-character video id and the canonical URL
//! `https://www.youtube.com/watch?v=ID`, so no user-controlled string is ever
//! handed to yt-dlp verbatim (playlist parameters such as `&list=` are dropped
//! and an id can never be mistaken for a command-line option).
//!
//! Rules follow `design/download.md` §4.3 (host allow-list, exactly 11 chars
//! of `[A-Za-z0-9_-]`, yt-dlp's `(?P<id>[0-9A-Za-z_-]{11})`).
//!
//! **SSRF.** Nothing outside YouTube is fetched unless the operator allowed the
//! host (`--allow-host`). On top of that:
//! - a URL whose host is an IP literal in a loopback, private, link-local,
//!   carrier-grade-NAT, unique-local, multicast or unspecified range, or the
//!   name `localhost` (and `*.localhost`), is refused with
//!   [`InputError::PrivateAddress`] unless that exact host is allow-listed;
//! - yt-dlp only ever receives canonical `https://www.youtube.com/watch?v=ID`
//!   URLs (whose redirects stay within YouTube's own infrastructure); direct
//!   URLs are fetched by our own HTTP client
//!   (`stages::download::direct`), which checks **every redirect target**
//!   with [`InputPolicy::check_fetch_url`] and every DNS answer with
//!   [`InputPolicy::check_resolved`] (a public-looking allowed name that
//!   resolves to a non-public address is refused unless the entry for it is
//!   itself explicit; see there). We chose this over handing yt-dlp a direct
//!   URL because yt-dlp follows redirects to any host and has no option to
//!   restrict them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use url::Url;

/// Canonical prefix every accepted YouTube video is normalized to.
const CANONICAL_WATCH: &str = "https://www.youtube.com/watch?v=";

/// Hosts that serve YouTube pages (compared after lowercasing and removing a
/// trailing dot). `youtu.be` is handled separately because its path carries
/// the id directly.
const YOUTUBE_PAGE_HOSTS: &[&str] = &[
    "youtube.com",
    "www.youtube.com",
    "m.youtube.com",
    "music.youtube.com",
    "youtube-nocookie.com",
    "www.youtube-nocookie.com",
];

/// The short-link host.
const YOUTU_BE: &str = "youtu.be";

/// Human-readable list of accepted hosts, used in error messages.
const ACCEPTED_HOSTS_TEXT: &str =
    "youtube.com, www.youtube.com, m.youtube.com, music.youtube.com, \
     youtube-nocookie.com, www.youtube-nocookie.com, youtu.be";

/// Inputs longer than this are echoed truncated in error messages.
const MAX_ECHO: usize = 120;

/// A validated, normalized user submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A single YouTube video.
    YouTube {
        /// The 11-character video id (`[A-Za-z0-9_-]{11}`; may start with `-`
        /// when it came from a URL).
        video_id: String,
        /// Canonical URL `https://www.youtube.com/watch?v=ID`; this, and only
        /// this, is what gets passed to yt-dlp.
        url: String,
    },
    /// A media file on the local filesystem.
    LocalFile {
        /// Absolute, canonicalized path (symlinks resolved) to a regular file
        /// that existed at validation time.
        path: PathBuf,
    },
    /// A direct media URL (`http`/`https`) on a host listed in
    /// [`InputPolicy::allow_hosts`].
    DirectUrl {
        /// The parsed URL (normalized by the `url` crate, WHATWG URL rules).
        url: Url,
    },
    /// A media file uploaded over HTTP and kept by the store; identified by its content, so
    /// the same bytes uploaded again (under any name) are the same input.
    Upload {
        /// Lowercase hex SHA-256 of the uploaded bytes (64 characters).
        sha256: String,
        /// Where the store keeps the bytes.
        path: PathBuf,
    },
}

/// Operator policy for what non-YouTube input is accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputPolicy {
    /// Hosts allowed for direct media URLs (`http`/`https` only).
    ///
    /// Each entry is an exact host name or IP literal, optionally followed by
    /// `:port`: `media.example.org`, `localhost:8080`, `127.0.0.1`,
    /// `[::1]:9000`. Matching is exact and case-insensitive (no wildcards, no
    /// subdomain matching). An entry **without** a port matches that host on
    /// any port; an entry **with** a port matches only that port (the
    /// scheme's default port counts, so `example.org:443` matches
    /// `https://example.org/`). Entries that cannot be parsed never match.
    ///
    /// Empty (the default) means no direct URLs are accepted.
    pub allow_hosts: Vec<String>,
    /// Submissions arrive over the network (the HTTP API): the local filesystem is never
    /// consulted, so a remote user can neither make the server read its files nor learn which
    /// paths exist. Path-like input and `file:` URLs get one uniform
    /// [`InputError::LocalFileRefused`]; a bare 11-character id is always a YouTube id.
    /// `false` (the default) is the CLI on the machine that holds the files.
    pub remote: bool,
}

impl InputPolicy {
    /// Builds a policy from a comma- and/or whitespace-separated list, the
    /// format of `TUBESCRIBE_ALLOW_HOSTS` (e.g. `"localhost:8080, media.lan"`).
    /// Empty items are ignored.
    pub fn from_list(list: &str) -> Self {
        let allow_hosts = list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        Self {
            allow_hosts,
            remote: false,
        }
    }

    /// Checks a URL we are about to fetch directly (the submitted URL on the
    /// worker, and every redirect target): `http`/`https`, no credentials, a
    /// host on the allow-list. YouTube hosts are not fetched directly and are
    /// refused here too unless allow-listed.
    ///
    /// # Errors
    /// [`InputError::UnsupportedScheme`], [`InputError::InvalidUrl`]
    /// (credentials, no host), [`InputError::PrivateAddress`] (a non-public
    /// IP literal or `localhost` that is not allowed) or
    /// [`InputError::HostNotAllowed`].
    pub fn check_fetch_url(&self, url: &Url) -> Result<(), InputError> {
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(InputError::UnsupportedScheme {
                    scheme: other.to_owned(),
                })
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InputError::InvalidUrl(
                "URLs with embedded credentials are not accepted".into(),
            ));
        }
        let host = normalize_host(url.host_str().unwrap_or_default());
        if host.is_empty() {
            return Err(InputError::InvalidUrl(format!(
                "{:?} has no host",
                echo(url.as_str())
            )));
        }
        if self.allows(url) {
            return Ok(());
        }
        if let Some(class) = non_public_host(&host) {
            return Err(InputError::PrivateAddress {
                host: host_for_message(url),
                class,
            });
        }
        Err(InputError::HostNotAllowed {
            host: host_for_message(url),
        })
    }

    /// Checks one DNS answer for a connection to the allowed host name `host`
    /// (lowercase, no port): a non-public address ([`ip_class`]) is accepted
    /// only when `host` is `localhost`/`*.localhost` or the allow-list entry
    /// names the address itself; every public address passes. Defence in
    /// depth against DNS rebinding: an allowed public name whose DNS answer
    /// suddenly points at `127.0.0.1` or `169.254.169.254` is refused.
    /// A name that really lives on a private network (`media.lan`) is
    /// therefore allowed by listing its address (`--allow-host 10.0.0.5`) as
    /// well as its name.
    ///
    /// # Errors
    /// [`InputError::PrivateAddress`] naming the host and the address class.
    pub fn check_resolved(&self, host: &str, addr: IpAddr) -> Result<(), InputError> {
        let Some(class) = ip_class(addr) else {
            return Ok(());
        };
        let host = normalize_host(host);
        if host == "localhost" || host.ends_with(".localhost") {
            return Ok(());
        }
        let literal = match addr {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let listed = self
            .allow_hosts
            .iter()
            .filter_map(|e| parse_host_entry(e))
            .any(|(h, _)| h == literal);
        if listed {
            Ok(())
        } else {
            Err(InputError::PrivateAddress {
                host: format!("{host} ({addr})"),
                class,
            })
        }
    }

    /// True when `url`'s host (and port) is on the allow-list.
    fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = normalize_host(host);
        let port = url.port_or_known_default();
        self.allow_hosts
            .iter()
            .any(|entry| match parse_host_entry(entry) {
                Some((h, None)) => h == host,
                Some((h, Some(p))) => h == host && Some(p) == port,
                None => false,
            })
    }
}

/// Why an input was refused: one sentence, cause first. Only a refused
/// YouTube URL starts with `Invalid YouTube URL:`; the others say what the
/// input is (empty, another host, another scheme, a file) and what to give
/// instead.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The input is not an acceptable YouTube video reference: empty input,
    /// playlist/channel/search/home page, bad id length or characters,
    /// non-YouTube host (from [`parse_youtube_url`]), unsupported path.
    #[error("Invalid YouTube URL: {0}")]
    InvalidYouTube(String),

    /// Nothing was given (empty or only whitespace). `remote`: submitted over HTTP, where
    /// files are not an option.
    #[error("empty input: give a YouTube video URL{}", if *remote { "" } else { " or a media file" })]
    Empty {
        /// Submitted over HTTP.
        remote: bool,
    },

    /// Text that is no URL, no video id and (`remote` = false) names no file, e.g.
    /// `not a url`.
    #[error(
        "{input:?} is not a YouTube URL{}",
        if *remote { " or video id" } else { ", a video id or an existing file" }
    )]
    Unrecognized {
        /// The input (trimmed, shortened).
        input: String,
        /// Submitted over HTTP.
        remote: bool,
    },

    /// An `http`/`https` URL whose host is neither a YouTube host nor on the
    /// direct-URL allow-list (this includes lookalikes such as
    /// `youtube.com.evil.com`). `host` includes `:port` when one was given.
    #[error(
        "host {host} is not a YouTube host and is not allowed for \
         direct media URLs; to fetch it anyway, allow it with `--allow-host {host}` \
         or TUBESCRIBE_ALLOW_HOSTS={host}"
    )]
    HostNotAllowed {
        /// The refused host, with `:port` when the URL had an explicit port.
        host: String,
    },

    /// An `http`/`https` URL whose host is an IP literal in a non-public
    /// range (loopback, private, link-local, …; see [`ip_class`]) or the name
    /// `localhost`, and is not on the allow-list; or an allowed name whose
    /// DNS answer is such an address (see [`InputPolicy::check_resolved`]).
    /// Server-side request forgery protection.
    #[error(
        "host {host} is a {class} address; private, loopback and \
         link-local addresses are refused unless allowed explicitly with `--allow-host`"
    )]
    PrivateAddress {
        /// The refused host (with `:port`, or with the resolved address).
        host: String,
        /// The address class, e.g. `loopback`, `private`, `link-local`.
        class: &'static str,
    },

    /// A URL with a scheme other than `http`, `https` or `file`
    /// (`ftp:`, `javascript:`, `data:`, …).
    #[error("scheme `{scheme}:` is not supported; use a YouTube URL, or an http(s):// URL on a host allowed with `--allow-host`")]
    UnsupportedScheme {
        /// The refused scheme, lowercased, without `:`.
        scheme: String,
    },

    /// A scheme-less URL on an allowed direct host (`localhost:8080/a.mp3`):
    /// we do not guess between `http` and `https`.
    #[error("`{input}` has no scheme; write http://{input} or https://{input}")]
    MissingScheme {
        /// The input as given (trimmed).
        input: String,
    },

    /// Something that looks like a URL but could not be parsed, or carries
    /// features we refuse (embedded credentials, remote `file://` host).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),

    /// A local path or `file:` URL submitted over the network (see [`InputPolicy::remote`]);
    /// the same message whether or not the path exists.
    #[error(
        "local files cannot be submitted over HTTP; submit a YouTube URL (or run \
         `tubescribe process FILE` on the machine that holds the file)"
    )]
    LocalFileRefused,

    /// A local path (or `file://` URL) that does not exist.
    #[error("file not found: {}", path.display())]
    FileNotFound {
        /// The path as given (relative paths are not resolved).
        path: PathBuf,
    },

    /// A local path that exists but is not a regular file (e.g. a directory).
    #[error("not a regular file: {}", path.display())]
    NotAFile {
        /// The path as given.
        path: PathBuf,
    },

    /// A local path that exists but could not be inspected or canonicalized.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The path as given.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn invalid(reason: impl Into<String>) -> InputError {
    InputError::InvalidYouTube(reason.into())
}

/// Shortens `s` for echoing in an error message.
fn echo(s: &str) -> String {
    if s.chars().count() <= MAX_ECHO {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX_ECHO).collect();
        format!("{head}…")
    }
}

/// Lowercases a host and strips one trailing dot (`YouTube.com.` → `youtube.com`).
fn normalize_host(host: &str) -> String {
    let h = host.to_ascii_lowercase();
    h.strip_suffix('.').map(str::to_owned).unwrap_or(h)
}

/// The class of a non-public IP address, or `None` for a public (globally
/// routable unicast) one. IPv4-mapped/compatible IPv6 addresses are judged by
/// their IPv4 part. Ranges: RFC 1122 (`0.0.0.0/8`, loopback `127/8`), RFC 1918
/// (`10/8`, `172.16/12`, `192.168/16`), RFC 3927 link-local `169.254/16`
/// (cloud metadata services live at `169.254.169.254`), RFC 6598 CGNAT
/// `100.64/10`, RFC 5737/3849 documentation, multicast, broadcast, reserved
/// `240/4`; IPv6 `::1`, `::`, `fc00::/7` (unique local), `fe80::/10`
/// (link-local), `ff00::/8`.
pub fn ip_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("carrier-grade NAT")
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                Some("multicast/reserved")
            } else if v4.is_documentation() || (o[0] == 192 && o[1] == 0 && o[2] == 0) {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return ip_class(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (seg[0] & 0xfe00) == 0xfc00 {
                Some("unique-local (private)")
            } else if (seg[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast/reserved")
            } else if seg[0] == 0 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0 && seg[4] == 0 {
                // ::a.b.c.d (deprecated IPv4-compatible) and other ::/80 forms
                let v4 = std::net::Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                ip_class(IpAddr::V4(v4)).or(Some("reserved"))
            } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
                Some("reserved")
            } else {
                None
            }
        }
    }
}

/// The non-public class of a normalized URL host (`127.0.0.1`, `[::1]`,
/// `localhost`, `foo.localhost`), or `None`.
fn non_public_host(host: &str) -> Option<&'static str> {
    if host == "localhost" || host.ends_with(".localhost") {
        return Some("loopback");
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().ok().and_then(ip_class)
}

/// Parses an allow-list entry into (normalized host, optional port).
fn parse_host_entry(entry: &str) -> Option<(String, Option<u16>)> {
    let entry = entry.trim();
    // Only host characters: the URL parser would quietly drop tabs and read `\` as `/`.
    if entry.is_empty()
        || !entry
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'))
    {
        return None;
    }
    let port_of = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| p.parse::<u16>().ok())
            .flatten()
            .filter(|&p| p != 0)
    };
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        // [v6] or [v6]:port
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(port_of(p.strip_prefix(':')?)?),
        };
        (format!("[{inside}]"), port)
    } else if entry.matches(':').count() > 1 {
        // bare IPv6 literal without brackets, no port possible
        (format!("[{entry}]"), None)
    } else if let Some((h, p)) = entry.split_once(':') {
        (h.to_owned(), Some(port_of(p)?))
    } else {
        (entry.to_owned(), None)
    };
    // Let the url crate normalize the host exactly like it does for inputs
    // (IDNA, IPv4/IPv6 canonical forms).
    let parsed = Url::parse(&format!("http://{host}/")).ok()?;
    let host = normalize_host(parsed.host_str()?);
    // Names are labels of letters, digits, `-` and `_` after IDNA, joined by single dots (one
    // trailing dot allowed); no wildcards (`*` would parse), no empty labels.
    let name_ok = |h: &str| {
        let h = h.strip_suffix('.').unwrap_or(h);
        !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            })
    };
    (host.starts_with('[') || name_ok(&host)).then_some((host, port))
}

/// True when `entry` is a usable [`InputPolicy::allow_hosts`] entry: `host`, `host:port`,
/// an IP literal or `[v6]:port`; false for URLs (`http://…`), paths, wildcards and bad ports.
pub fn valid_host_entry(entry: &str) -> bool {
    parse_host_entry(entry).is_some()
}

/// `host` or `host:port` as written in the URL, for messages.
fn host_for_message(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// True for the id alphabet `[A-Za-z0-9_-]`.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Validates a candidate video id: exactly 11 chars of `[A-Za-z0-9_-]`.
fn check_id(id: &str) -> Result<String, InputError> {
    if id.is_empty() {
        return Err(invalid("the video id is missing"));
    }
    if let Some(bad) = id.chars().find(|c| !is_id_char(*c)) {
        return Err(invalid(format!(
            "video id {:?} contains {bad:?}; ids use only A-Z a-z 0-9 _ -",
            echo(id)
        )));
    }
    let n = id.chars().count();
    if n != 11 {
        return Err(invalid(format!(
            "video id {:?} has {n} characters; YouTube video ids have exactly 11",
            echo(id)
        )));
    }
    Ok(id.to_owned())
}

fn youtube_result(id: &str) -> Result<(String, String), InputError> {
    let id = check_id(id)?;
    let url = format!("{CANONICAL_WATCH}{id}");
    Ok((id, url))
}

/// Returns the position after `scheme:` when `s` starts with an RFC 3986
/// scheme (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`) that is not
/// actually a `host:port` (`localhost:8080/x` has no scheme).
fn scheme_of(s: &str) -> Option<&str> {
    let colon = s.find(':')?;
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let rest = &s[colon + 1..];
    if rest.starts_with(|c: char| c.is_ascii_digit()) {
        // host:port
        return None;
    }
    Some(scheme)
}

/// The authority part of a scheme-less input (`youtube.com/watch?v=x` →
/// `youtube.com`), lowercased, without port or trailing dot.
fn schemeless_host(s: &str) -> String {
    let end = s.find(['/', '?', '#']).unwrap_or(s.len());
    let authority = &s[..end];
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    normalize_host(host)
}

fn is_youtube_host(host: &str) -> bool {
    host == YOUTU_BE || YOUTUBE_PAGE_HOSTS.contains(&host)
}

/// True when a scheme-less string starts with something that looks like a
/// host name (`vimeo.com/…`, `localhost:8080/…`, `10.0.0.2/…`) rather than a
/// relative path. Requires a `/`, `?` or `#` after the authority so that a
/// plain file name like `talk.mp3` is not taken for a host.
fn looks_like_host_url(s: &str) -> bool {
    let Some(end) = s.find(['/', '?', '#']) else {
        return false;
    };
    let authority = &s[..end];
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    if labels.len() < 2
        || labels
            .iter()
            .any(|l| l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return false;
    }
    let last = labels[labels.len() - 1];
    // TLD: letters only (>= 2), or an IPv4 literal (all-numeric labels).
    (last.len() >= 2 && last.chars().all(|c| c.is_ascii_alphabetic()))
        || labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit()))
}

/// Parses a YouTube video reference and returns `(video_id, canonical_url)`,
/// where `canonical_url` is `https://www.youtube.com/watch?v=ID`.
///
/// Accepted (surrounding whitespace ignored; `http`, `https` or no scheme;
/// hosts `youtube.com`, `www.`/`m.`/`music.youtube.com`,
/// `youtube-nocookie.com`, `www.youtube-nocookie.com`, `youtu.be`, any case,
/// optional trailing dot, default port only):
/// - `/watch?v=ID` with any other parameters before or after (`t`, `list`,
///   `index`, `si`, `feature`, `pp`, `ab_channel`…); with `list=` only the
///   one video is returned. Also `/watch_popup?v=ID` and `/?v=ID`.
/// - `youtu.be/ID` (query such as `?si=…&t=30` ignored).
/// - `/shorts/ID`, `/embed/ID`, `/live/ID`, `/v/ID`, `/e/ID` (all claimed by
///   yt-dlp's `youtube` extractor, see `design/download.md` §4.3), with an
///   optional trailing slash and query.
/// - `/attribution_link?u=/watch%3Fv%3DID…` (one level, the `u` target must be
///   a YouTube path).
/// - A bare 11-character id, **unless it starts with `-`** (such a string is
///   indistinguishable from a command-line option in logs and shells; submit
///   the full URL instead). Ids starting with `-` are accepted inside URLs.
///
/// # Errors
/// [`InputError::InvalidYouTube`] (Display starts with `Invalid YouTube URL:`)
/// for empty input, non-`http(s)` schemes, non-YouTube hosts (including
/// lookalikes such as `youtube.com.evil.com`), credentials in the URL,
/// non-default ports, playlists, channels (`/@name`, `/channel/…`, `/c/…`,
/// `/user/…`), search, feeds, clips, the home page, and ids that are not
/// exactly 11 characters of `[A-Za-z0-9_-]`.
pub fn parse_youtube_url(s: &str) -> Result<(String, String), InputError> {
    parse_youtube_inner(s, true)
}

fn parse_youtube_inner(s: &str, allow_attribution: bool) -> Result<(String, String), InputError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(invalid("empty input; submit a YouTube video URL"));
    }
    // Bare id: no URL punctuation at all.
    if !s.contains(['/', '.', ':', '?', '#', '=']) {
        if s.starts_with('-') {
            return Err(invalid(format!(
                "bare video ids starting with '-' are not accepted; submit the full URL \
                 {CANONICAL_WATCH}{}",
                echo(s)
            )));
        }
        return youtube_result(s).map_err(|e| match e {
            InputError::InvalidYouTube(reason) => invalid(format!(
                "{reason} (not a URL and not a valid bare video id)"
            )),
            other => other,
        });
    }
    let text = with_https(s);
    let url = Url::parse(&text)
        .map_err(|e| InputError::InvalidUrl(format!("cannot parse {:?}: {e}", echo(s))))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(invalid(format!(
                "scheme `{other}:` is not supported; use an https://www.youtube.com/watch?v=… URL"
            )))
        }
    }
    let host = normalize_host(url.host_str().unwrap_or_default());
    if !is_youtube_host(&host) {
        return Err(invalid(format!(
            "host {host} is not a YouTube host (accepted: {ACCEPTED_HOSTS_TEXT})"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("URLs with embedded credentials are not accepted"));
    }
    if url.port().is_some() {
        return Err(invalid(format!(
            "port {} is not used by YouTube",
            url.port().unwrap_or_default()
        )));
    }
    let segments: Vec<&str> = url
        .path_segments()
        .map(|it| it.filter(|seg| !seg.is_empty()).collect())
        .unwrap_or_default();
    let query = |key: &str| -> Option<String> {
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };

    if host == YOUTU_BE {
        return match segments.as_slice() {
            [id] => youtube_result(id),
            [] => Err(invalid("youtu.be link without a video id")),
            _ => Err(invalid(format!(
                "unrecognised youtu.be path {:?}",
                echo(url.path())
            ))),
        };
    }

    let playlist_msg = "playlists are not supported; submit a single video URL";
    let channel_msg = "channel pages are not supported; submit a single video URL";
    match segments.as_slice() {
        [] | ["watch"] | ["watch_popup"] => match query("v") {
            Some(id) => youtube_result(&id),
            None if query("list").is_some() => Err(invalid(playlist_msg)),
            None if segments.is_empty() => Err(invalid(
                "the YouTube home page is not a video; submit a single video URL",
            )),
            None => Err(invalid("watch URL without a v= parameter")),
        },
        ["shorts" | "embed" | "live" | "v" | "e", id] => {
            if matches!(*id, "videoseries" | "live_stream") {
                Err(invalid(playlist_msg))
            } else {
                youtube_result(id)
            }
        }
        ["shorts" | "embed" | "live" | "v" | "e"] => {
            Err(invalid(format!("{:?} has no video id", echo(url.path()))))
        }
        ["playlist", ..] => Err(invalid(playlist_msg)),
        [first, ..] if first.starts_with('@') || first.starts_with("%40") => {
            Err(invalid(channel_msg))
        }
        ["channel" | "c" | "user", ..] => Err(invalid(channel_msg)),
        ["results", ..] => Err(invalid(
            "search result pages are not supported; submit a single video URL",
        )),
        ["feed", ..] => Err(invalid(
            "feed pages are not supported; submit a single video URL",
        )),
        ["clip", ..] => Err(invalid(
            "clips are not supported; submit the full video URL",
        )),
        ["attribution_link"] if allow_attribution => match query("u") {
            Some(target) if target.starts_with('/') && !target.starts_with("//") => {
                parse_youtube_inner(&format!("https://www.youtube.com{target}"), false)
            }
            _ => Err(invalid("attribution_link without a YouTube target")),
        },
        _ => Err(invalid(format!(
            "unrecognised YouTube path {:?}; submit a single video URL",
            echo(url.path())
        ))),
    }
}

/// `s` with `https://` in front when it has no scheme (`youtube.com/…`, `//youtu.be/…`).
fn with_https(s: &str) -> std::borrow::Cow<'_, str> {
    match scheme_of(s) {
        Some(_) => s.into(),
        None => format!("https://{}", s.trim_start_matches('/')).into(),
    }
}

/// A YouTube playlist or channel, normalized for a listing by yt-dlp (`expand`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// Playlist or channel.
    pub kind: crate::domain::options::CollectionKind,
    /// The canonical URL, built from the validated id only:
    /// `https://www.youtube.com/playlist?list=ID`, or a channel's uploads tab
    /// `https://www.youtube.com/@handle/videos` (also `/channel/UC…/videos`, `/c/…/videos`,
    /// `/user/…/videos`). This, and only this, is passed to yt-dlp.
    pub url: String,
}

/// Recognizes a YouTube playlist or channel URL, for submissions with `expand`: a
/// `/playlist?list=ID` page (also a `watch` URL with `list=` but no `v=`), or a channel page
/// (`/@handle`, `/channel/UC…`, `/c/name`, `/user/name`, with or without a tab such as
/// `/videos` or `/featured`: the uploads are always listed). `None` for anything else
/// (single videos included), so the caller parses it as usual.
///
/// A list id is 2–64 characters of `[A-Za-z0-9_-]`; a handle or name 1–100 characters of
/// `[A-Za-z0-9_.-]` (a `%40`-encoded `@` is accepted).
pub fn parse_collection_url(s: &str) -> Option<Collection> {
    use crate::domain::options::CollectionKind;
    let s = s.trim();
    let text = with_https(s);
    let url = Url::parse(&text).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
        || url.port().is_some()
    {
        return None;
    }
    let host = normalize_host(url.host_str().unwrap_or_default());
    if !is_youtube_host(&host) || host == YOUTU_BE {
        return None;
    }
    let segments: Vec<&str> = url
        .path_segments()
        .map(|it| it.filter(|seg| !seg.is_empty()).collect())
        .unwrap_or_default();
    let query = |key: &str| {
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let name_ok = |n: &str| {
        (1..=100).contains(&n.len())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let channel = |path: String| {
        Some(Collection {
            kind: CollectionKind::Channel,
            url: format!("https://www.youtube.com/{path}/videos"),
        })
    };
    match segments.as_slice() {
        ["playlist"] | ["watch"] | [] if query("v").is_none() => {
            let id = query("list")?;
            let ok = (2..=64).contains(&id.len()) && id.chars().all(is_id_char);
            ok.then(|| Collection {
                kind: CollectionKind::Playlist,
                url: format!("https://www.youtube.com/playlist?list={id}"),
            })
        }
        [first, ..] if first.starts_with('@') || first.starts_with("%40") => {
            let handle = first
                .strip_prefix('@')
                .or_else(|| first.strip_prefix("%40"))?;
            name_ok(handle).then_some(())?;
            channel(format!("@{handle}"))
        }
        [kind @ ("channel" | "c" | "user"), name, ..] if name_ok(name) => {
            channel(format!("{kind}/{name}"))
        }
        _ => None,
    }
}

/// Validates and normalizes a user submission.
///
/// Decision order (the first that applies wins):
/// 1. Empty (after trimming) → [`InputError::Empty`].
/// 2. Input without `://` that names an **existing** path → local file
///    ([`Input::LocalFile`], canonicalized; an existing file wins over a
///    same-named bare id). Existing non-regular files (directories…) →
///    [`InputError::NotAFile`]. `~` is not expanded. Skipped for a
///    [`InputPolicy::remote`] policy, which answers every path form (and
///    `file:` URLs) with [`InputError::LocalFileRefused`] without touching the disk.
/// 3. Input with a scheme: `file:` → local file (must exist, local host
///    only); `http`/`https` on a YouTube host → [`parse_youtube_url`];
///    `http`/`https` elsewhere → [`Input::DirectUrl`] if the host is in
///    `policy.allow_hosts`, else [`InputError::HostNotAllowed`]; any other
///    scheme → [`InputError::UnsupportedScheme`].
/// 4. Scheme-less (or protocol-relative `//…`) input on a YouTube host
///    (`youtu.be/ID`, `youtube.com/watch?v=ID`) → [`parse_youtube_url`].
/// 5. Scheme-less input starting with another host name followed by `/`
///    (`vimeo.com/1`, `localhost:8080/a.mp3`) → [`InputError::HostNotAllowed`]
///    or, if the host is allowed, [`InputError::MissingScheme`].
/// 6. Only characters of the id alphabet → bare id via
///    [`parse_youtube_url`] (11 chars, not starting with `-`), otherwise
///    [`InputError::InvalidYouTube`] ("neither a video id nor an existing
///    file").
/// 7. Anything else that reads as a path ([`looks_like_path`]: `/`, `~`,
///    `.`, or a file extension) is a missing local file →
///    [`InputError::FileNotFound`] ([`InputError::LocalFileRefused`] for a
///    remote policy); other text → [`InputError::Unrecognized`].
///
/// # Errors
/// See [`InputError`]; a refused YouTube URL displays with the prefix
/// `Invalid YouTube URL:`, the others name their cause first.
pub fn parse_input(s: &str, policy: &InputPolicy) -> Result<Input, InputError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(InputError::Empty {
            remote: policy.remote,
        });
    }

    if !s.contains("://") && !policy.remote {
        let path = Path::new(s);
        match std::fs::metadata(path) {
            Ok(meta) => return local_file(path, &meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // e.g. "File name too long" for a long URL-ish string, or
            // permission denied on a parent: fall through to URL handling.
            Err(_) => {}
        }
    }

    // Protocol-relative `//host/...`: treat like scheme-less when it names a
    // host (a missing absolute path `//srv/x.wav` still reads as a file).
    let s = match s.strip_prefix("//") {
        Some(rest)
            if !rest.starts_with('/')
                && (is_youtube_host(&schemeless_host(rest)) || looks_like_host_url(rest)) =>
        {
            rest
        }
        _ => s,
    };

    if let Some(scheme) = scheme_of(s) {
        let scheme = scheme.to_ascii_lowercase();
        return match scheme.as_str() {
            "file" if policy.remote => Err(InputError::LocalFileRefused),
            "file" => file_url(s),
            "http" | "https" => {
                let url = Url::parse(s).map_err(|e| {
                    InputError::InvalidUrl(format!("cannot parse {:?}: {e}", echo(s)))
                })?;
                let host = normalize_host(url.host_str().unwrap_or_default());
                if is_youtube_host(&host) {
                    return youtube_input(s);
                }
                if host.is_empty() {
                    return Err(InputError::InvalidUrl(format!("{:?} has no host", echo(s))));
                }
                if !policy.allows(&url) {
                    if let Some(class) = non_public_host(&host) {
                        return Err(InputError::PrivateAddress {
                            host: host_for_message(&url),
                            class,
                        });
                    }
                    return Err(InputError::HostNotAllowed {
                        host: host_for_message(&url),
                    });
                }
                policy.check_fetch_url(&url)?;
                Ok(Input::DirectUrl { url })
            }
            _ => Err(InputError::UnsupportedScheme { scheme }),
        };
    }

    if is_youtube_host(&schemeless_host(s)) {
        return youtube_input(s);
    }

    if looks_like_host_url(s) {
        let guess = Url::parse(&format!("http://{s}"))
            .map_err(|e| InputError::InvalidUrl(format!("cannot parse {:?}: {e}", echo(s))))?;
        let host = normalize_host(guess.host_str().unwrap_or_default());
        return if policy.allows(&guess) {
            Err(InputError::MissingScheme { input: echo(s) })
        } else if let Some(class) = non_public_host(&host) {
            Err(InputError::PrivateAddress {
                host: host_for_message(&guess),
                class,
            })
        } else {
            Err(InputError::HostNotAllowed {
                host: host_for_message(&guess),
            })
        };
    }

    if s.chars().all(is_id_char) {
        return youtube_input(s).map_err(|e| match e {
            InputError::InvalidYouTube(_) if s.chars().count() != 11 => invalid(format!(
                "{:?} is neither an 11-character video id nor an existing file",
                echo(s)
            )),
            other => other,
        });
    }

    if !looks_like_path(s) {
        return Err(InputError::Unrecognized {
            input: echo(s),
            remote: policy.remote,
        });
    }
    if policy.remote {
        return Err(InputError::LocalFileRefused);
    }
    Err(InputError::FileNotFound {
        path: PathBuf::from(s),
    })
}

/// Whether text that is no URL reads as a file path: it has a directory part (`/`, `\`),
/// starts with `~` or `.`, or ends in an extension of 1–5 letters or digits (`talk.mp3`).
/// Purely by its spelling: over HTTP the disk is never looked at.
fn looks_like_path(s: &str) -> bool {
    let ext = s.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && (1..=5).contains(&ext.len())
            && ext.chars().all(|c| c.is_ascii_alphanumeric())
    });
    s.contains(['/', '\\']) || s.starts_with(['~', '.']) || ext
}

fn youtube_input(s: &str) -> Result<Input, InputError> {
    let (video_id, url) = parse_youtube_url(s)?;
    Ok(Input::YouTube { video_id, url })
}

fn local_file(path: &Path, meta: &std::fs::Metadata) -> Result<Input, InputError> {
    if !meta.is_file() {
        return Err(InputError::NotAFile {
            path: path.to_owned(),
        });
    }
    let canonical = std::fs::canonicalize(path).map_err(|source| InputError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    Ok(Input::LocalFile { path: canonical })
}

fn file_url(s: &str) -> Result<Input, InputError> {
    let url = Url::parse(s)
        .map_err(|e| InputError::InvalidUrl(format!("cannot parse {:?}: {e}", echo(s))))?;
    let path = url.to_file_path().map_err(|()| {
        InputError::InvalidUrl(format!(
            "{:?} is not a local file URL (only file:///absolute/path is accepted)",
            echo(s)
        ))
    })?;
    match std::fs::metadata(&path) {
        Ok(meta) => local_file(&path, &meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(InputError::FileNotFound { path })
        }
        Err(source) => Err(InputError::Unreadable { path, source }),
    }
}

fn sha256_16(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = hex::encode(digest);
    hex.truncate(16);
    hex
}

impl Input {
    /// A stable key for deduplication and BullMQ custom job ids.
    ///
    /// - YouTube: `yt-<video_id>`.
    /// - Local file: `file-<first 16 hex chars of SHA-256 of the canonical
    ///   path's bytes>`, followed by `\0<size in bytes>\0<mtime in ns>` when the
    ///   file can be stat'ed, so a file changed in place is a new task.
    /// - Direct URL: `url-<first 16 hex chars of SHA-256 of the normalized
    ///   URL string>`.
    /// - Upload: `upload-<first 16 hex chars of the content's SHA-256>`.
    ///
    /// The result contains only `[A-Za-z0-9_-]` (no `:`, which BullMQ uses as
    /// its key separator) and always starts with a letter, so it is never
    /// all digits (BullMQ rejects integer-looking custom ids). The key
    /// depends only on the normalized input, so equal submissions (e.g.
    /// `youtu.be/ID` and `watch?v=ID&t=5`) get equal keys.
    pub fn source_key(&self) -> String {
        match self {
            Input::YouTube { video_id, .. } => format!("yt-{video_id}"),
            Input::LocalFile { path } => {
                let mut bytes = path.as_os_str().as_encoded_bytes().to_vec();
                if let Ok(md) = std::fs::metadata(path) {
                    let mtime_ns = md
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    bytes.extend_from_slice(format!("\0{}\0{mtime_ns}", md.len()).as_bytes());
                }
                format!("file-{}", sha256_16(&bytes))
            }
            Input::DirectUrl { url } => format!("url-{}", sha256_16(url.as_str().as_bytes())),
            Input::Upload { sha256, .. } => format!("upload-{}", &sha256[..sha256.len().min(16)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_are_recognized_and_rebuilt() {
        use crate::domain::options::CollectionKind::{Channel, Playlist};
        for (input, want) in [
            (
                "https://www.youtube.com/playlist?list=PLx0sYbCqOb8TBPRdmBHs5Iftvv9TPboYG",
                Some((
                    Playlist,
                    "https://www.youtube.com/playlist?list=PLx0sYbCqOb8TBPRdmBHs5Iftvv9TPboYG",
                )),
            ),
            (
                "youtube.com/watch?list=PLabc_-1&index=3",
                Some((Playlist, "https://www.youtube.com/playlist?list=PLabc_-1")),
            ),
            (
                "https://m.youtube.com/@RickAstleyYT",
                Some((Channel, "https://www.youtube.com/@RickAstleyYT/videos")),
            ),
            (
                "https://www.youtube.com/@Some.Handle-1/featured",
                Some((Channel, "https://www.youtube.com/@Some.Handle-1/videos")),
            ),
            (
                "https://www.youtube.com/channel/UCuAXFkgsw1L7xaCfnd5JJOw",
                Some((
                    Channel,
                    "https://www.youtube.com/channel/UCuAXFkgsw1L7xaCfnd5JJOw/videos",
                )),
            ),
            (
                "https://www.youtube.com/user/RickAstleyVEVO/videos",
                Some((
                    Channel,
                    "https://www.youtube.com/user/RickAstleyVEVO/videos",
                )),
            ),
            (
                "https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=PLabc",
                None,
            ),
            ("https://www.youtube.com/playlist?list=PL%22%3Bx", None),
            ("https://www.youtube.com/@bad%20handle", None),
            ("https://youtube.com.evil.example/playlist?list=PLabc", None),
            ("https://www.youtube.com:8443/playlist?list=PLabc", None),
            ("https://youtu.be/dQw4w9WgXcQ", None),
            ("https://www.youtube.com/results?search_query=x", None),
        ] {
            let got = parse_collection_url(input).map(|c| (c.kind, c.url));
            assert_eq!(got, want.map(|(k, u)| (k, u.to_string())), "{input}");
        }
    }

    const ID: &str = "dQw4w9WgXcQ";

    #[test]
    fn accepted_forms_table() {
        let dash = "-abcDEF_123";
        let cases: &[(&str, &str)] = &[
            ("https://www.youtube.com/watch?v=dQw4w9WgXcQ", ID),
            ("http://www.youtube.com/watch?v=dQw4w9WgXcQ", ID),
            ("https://youtube.com/watch?v=dQw4w9WgXcQ", ID),
            ("https://m.youtube.com/watch?v=dQw4w9WgXcQ", ID),
            ("https://music.youtube.com/watch?v=dQw4w9WgXcQ&feature=share", ID),
            ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=42s", ID),
            ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=1m30s", ID),
            ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=PLx0sYbCqOb8TBPRdmBHs5Iftvv9TPboYG&index=2", ID),
            ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&si=AbCdEfGhIjKlMnOp", ID),
            ("https://www.youtube.com/watch?feature=shared&v=dQw4w9WgXcQ", ID),
            ("https://www.youtube.com/watch?t=10&v=dQw4w9WgXcQ", ID),
            ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&ab_channel=RickAstley", ID),
            ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&pp=ygUJcmljayByb2xs", ID),
            ("https://youtu.be/dQw4w9WgXcQ", ID),
            ("https://youtu.be/dQw4w9WgXcQ?si=AbCdEfGhIjKlMnOp", ID),
            ("https://youtu.be/dQw4w9WgXcQ?si=x&t=30", ID),
            ("https://youtu.be/dQw4w9WgXcQ/", ID),
            ("https://www.youtube.com/shorts/dQw4w9WgXcQ", ID),
            ("https://youtube.com/shorts/dQw4w9WgXcQ?feature=share", ID),
            ("https://www.youtube.com/embed/dQw4w9WgXcQ?start=10", ID),
            ("https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ", ID),
            ("https://youtube-nocookie.com/embed/dQw4w9WgXcQ", ID),
            ("https://www.youtube.com/live/dQw4w9WgXcQ?si=abc", ID),
            ("https://www.youtube.com/v/dQw4w9WgXcQ", ID),
            ("https://www.youtube.com/e/dQw4w9WgXcQ", ID),
            ("youtube.com/watch?v=dQw4w9WgXcQ", ID),
            ("www.youtube.com/watch?v=dQw4w9WgXcQ", ID),
            ("youtu.be/dQw4w9WgXcQ", ID),
            ("//youtu.be/dQw4w9WgXcQ", ID),
            ("m.youtube.com/shorts/dQw4w9WgXcQ/", ID),
            ("https://www.youtube.com/watch/?v=dQw4w9WgXcQ", ID),
            ("  https://www.youtube.com/watch?v=dQw4w9WgXcQ \n", ID),
            ("HTTPS://WWW.YOUTUBE.COM/watch?v=dQw4w9WgXcQ", ID),
            ("https://www.youtube.com./watch?v=dQw4w9WgXcQ", ID),
            ("https://www.youtube.com:443/watch?v=dQw4w9WgXcQ", ID),
            ("https://www.youtube.com/?v=dQw4w9WgXcQ", ID),
            ("https://www.youtube.com/watch_popup?v=dQw4w9WgXcQ", ID),
            ("https://www.youtube.com/attribution_link?a=x&u=/watch%3Fv%3DdQw4w9WgXcQ%26feature%3Dshare", ID),
            ("https://www.youtube.com/watch?v=-abcDEF_123", dash),
            ("https://youtu.be/-abcDEF_123", dash),
            ("dQw4w9WgXcQ", ID),
            ("  dQw4w9WgXcQ  ", ID),
        ];
        assert!(cases.len() >= 25);
        for (input, want) in cases {
            let (id, url) = parse_youtube_url(input)
                .unwrap_or_else(|e| panic!("{input:?} should be accepted: {e}"));
            assert_eq!(&id, want, "{input:?}");
            assert_eq!(url, format!("https://www.youtube.com/watch?v={want}"));
            // parse_input agrees (none of these names an existing file).
            match parse_input(input, &InputPolicy::default()) {
                Ok(Input::YouTube { video_id, url: u }) => {
                    assert_eq!(&video_id, want, "{input:?}");
                    assert_eq!(u, url);
                }
                other => panic!("{input:?}: parse_input gave {other:?}"),
            }
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Kind {
        Yt,
        Host,
        Scheme,
        NotFound,
        Private,
        Empty,
        Unrecognized,
    }

    fn kind(e: &InputError) -> Kind {
        match e {
            InputError::InvalidYouTube(_) => Kind::Yt,
            InputError::HostNotAllowed { .. } => Kind::Host,
            InputError::UnsupportedScheme { .. } => Kind::Scheme,
            InputError::FileNotFound { .. } => Kind::NotFound,
            InputError::PrivateAddress { .. } => Kind::Private,
            InputError::Empty { .. } => Kind::Empty,
            InputError::Unrecognized { .. } => Kind::Unrecognized,
            other => panic!("unexpected error kind {other:?}"),
        }
    }

    #[test]
    fn rejected_forms_table() {
        const P: &str = "Invalid YouTube URL: ";
        let cases: &[(&str, Kind, &str)] = &[
            ("", Kind::Empty, "empty input: give a YouTube video URL or a media file"),
            ("   \t\n", Kind::Empty, "empty input: give a YouTube video URL or a media file"),
            ("not a url", Kind::Unrecognized, "\"not a url\" is not a YouTube URL, a video id or an existing file"),
            ("https://www.youtube.com/playlist?list=PLx0sYbCqOb8TBPRdmBHs5Iftvv9TPboYG", Kind::Yt,
             "Invalid YouTube URL: playlists are not supported; submit a single video URL"),
            ("https://www.youtube.com/watch?list=PLx0sYbCqOb8TBPRdmBHs5Iftvv9TPboYG", Kind::Yt,
             "Invalid YouTube URL: playlists are not supported"),
            ("https://www.youtube.com/embed/videoseries?list=PLx0", Kind::Yt,
             "Invalid YouTube URL: playlists are not supported"),
            ("https://www.youtube.com/@RickAstleyYT", Kind::Yt, "Invalid YouTube URL: channel pages"),
            ("https://www.youtube.com/@RickAstleyYT/live", Kind::Yt, "Invalid YouTube URL: channel pages"),
            ("https://www.youtube.com/channel/UCuAXFkgsw1L7xaCfnd5JJOw", Kind::Yt, "Invalid YouTube URL: channel pages"),
            ("https://www.youtube.com/c/RickAstleyVEVO", Kind::Yt, "Invalid YouTube URL: channel pages"),
            ("https://www.youtube.com/user/RickAstleyVEVO", Kind::Yt, "Invalid YouTube URL: channel pages"),
            ("https://www.youtube.com/results?search_query=rick+astley", Kind::Yt, "Invalid YouTube URL: search result pages"),
            ("https://www.youtube.com/", Kind::Yt, "Invalid YouTube URL: the YouTube home page"),
            ("youtube.com", Kind::Yt, "Invalid YouTube URL: the YouTube home page"),
            ("https://www.youtube.com/clip/UgkxAbc", Kind::Yt, "Invalid YouTube URL: clips are not supported"),
            ("https://vimeo.com/76979871", Kind::Host, "host vimeo.com is not a YouTube host"),
            ("vimeo.com/76979871", Kind::Host, "host vimeo.com is not a YouTube host"),
            ("https://youtube.com.evil.com/watch?v=dQw4w9WgXcQ", Kind::Host,
             "host youtube.com.evil.com is not a YouTube host"),
            ("https://notyoutube.com/watch?v=dQw4w9WgXcQ", Kind::Host,
             "host notyoutube.com is not a YouTube host"),
            ("https://www.youtube.com@evil.com/watch?v=dQw4w9WgXcQ", Kind::Host,
             "host evil.com is not a YouTube host"),
            ("https://www.youtube.com/watch?v=dQw4w9WgXc", Kind::Yt,
             "Invalid YouTube URL: video id \"dQw4w9WgXc\" has 10 characters"),
            ("https://www.youtube.com/watch?v=dQw4w9WgXcQQ", Kind::Yt,
             "Invalid YouTube URL: video id \"dQw4w9WgXcQQ\" has 12 characters"),
            ("https://youtu.be/dQw4w9WgX!Q", Kind::Yt, "Invalid YouTube URL: video id \"dQw4w9WgX!Q\" contains '!'"),
            ("https://www.youtube.com/watch?v=dQw4w9WgX%5DQ", Kind::Yt, "Invalid YouTube URL: video id \"dQw4w9WgX]Q\" contains ']'"),
            ("https://www.youtube.com/watch?v=", Kind::Yt, "Invalid YouTube URL: the video id is missing"),
            ("https://www.youtube.com/watch", Kind::Yt, "Invalid YouTube URL: watch URL without a v= parameter"),
            ("https://youtu.be/", Kind::Yt, "Invalid YouTube URL: youtu.be link without a video id"),
            ("https://www.youtube.com/shorts/", Kind::Yt, "Invalid YouTube URL: \"/shorts/\" has no video id"),
            ("dQw4w9WgXc", Kind::Yt, "Invalid YouTube URL: \"dQw4w9WgXc\" is neither an 11-character video id nor an existing file"),
            ("-abcDEF_123", Kind::Yt, "Invalid YouTube URL: bare video ids starting with '-' are not accepted"),
            ("ftp://example.com/a.mp3", Kind::Scheme, "scheme `ftp:` is not supported"),
            ("javascript:alert(1)", Kind::Scheme, "scheme `javascript:` is not supported"),
            ("data:text/plain,hello", Kind::Scheme, "scheme `data:` is not supported"),
            ("http://media.example.org:8080/a.mp3", Kind::Host,
             "host media.example.org:8080 is not a YouTube host and is not allowed for direct media URLs; \
              to fetch it anyway, allow it with `--allow-host media.example.org:8080` or TUBESCRIBE_ALLOW_HOSTS=media.example.org:8080"),
            ("http://localhost:8080/a.mp3", Kind::Private,
             "host localhost:8080 is a loopback address; private, loopback and link-local addresses \
              are refused unless allowed explicitly with `--allow-host`"),
            ("/definitely/not/here/talk.mp3", Kind::NotFound, "file not found: /definitely/not/here/talk.mp3"),
            ("talk-that-does-not-exist.mp3", Kind::NotFound, "file not found: talk-that-does-not-exist.mp3"),
        ];
        assert!(cases.len() >= 12);
        for (input, want_kind, want_prefix) in cases {
            let err = match parse_input(input, &InputPolicy::default()) {
                Ok(v) => panic!("{input:?} should be refused, got {v:?}"),
                Err(e) => e,
            };
            assert_eq!(kind(&err), *want_kind, "{input:?}: {err}");
            let msg = err.to_string();
            assert!(
                msg.starts_with(want_prefix),
                "{input:?}: got {msg:?}, want prefix {want_prefix:?}"
            );
            // Only a refused YouTube URL is called one.
            assert_eq!(msg.starts_with(P), *want_kind == Kind::Yt, "{msg}");
        }
    }

    #[test]
    fn parse_youtube_url_refuses_other_hosts_as_invalid_youtube() {
        let err = parse_youtube_url("https://vimeo.com/76979871").err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("Invalid YouTube URL: host vimeo.com is not a YouTube host"),
            "{msg}"
        );
        for bad in [
            "https://www.youtube.com:8080/watch?v=dQw4w9WgXcQ",
            "https://user:pw@www.youtube.com/watch?v=dQw4w9WgXcQ",
            "ftp://www.youtube.com/watch?v=dQw4w9WgXcQ",
            "https://www.youtube.com/feed/subscriptions",
            "https://www.youtube.com/attribution_link?u=https://evil.com/watch?v=dQw4w9WgXcQ",
            "https://www.youtube.com/dQw4w9WgXcQ",
        ] {
            assert!(
                matches!(parse_youtube_url(bad), Err(InputError::InvalidYouTube(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn allow_list() {
        let policy = InputPolicy {
            allow_hosts: vec![
                "localhost:8080".into(),
                "Media.Example.org".into(),
                "[::1]:9000".into(),
            ],
            ..Default::default()
        };
        let ok = |s: &str| match parse_input(s, &policy) {
            Ok(Input::DirectUrl { url }) => url,
            other => panic!("{s:?}: {other:?}"),
        };
        assert_eq!(
            ok("http://localhost:8080/a.mp3").as_str(),
            "http://localhost:8080/a.mp3"
        );
        ok("https://media.example.org/x/y.m4a");
        ok("http://media.example.org:81/x.wav"); // entry without port: any port
        ok("http://[::1]:9000/a.mp3");
        for refused in [
            "http://localhost:8081/a.mp3",
            "http://localhost/a.mp3",
            "http://127.0.0.1:8080/a.mp3",
            "https://evil.example.org/a.mp3",
            "https://media.example.org.evil.com/a.mp3",
            "http://[::1]:9001/a.mp3",
        ] {
            assert!(
                matches!(
                    parse_input(refused, &policy),
                    Err(InputError::HostNotAllowed { .. } | InputError::PrivateAddress { .. })
                ),
                "{refused}"
            );
        }
        // Default port counts when the entry has a port.
        let p443 = InputPolicy {
            allow_hosts: vec!["example.org:443".into()],
            ..Default::default()
        };
        assert!(matches!(
            parse_input("https://example.org/a.mp3", &p443),
            Ok(Input::DirectUrl { .. })
        ));
        assert!(matches!(
            parse_input("http://example.org/a.mp3", &p443),
            Err(InputError::HostNotAllowed { .. })
        ));
        // Scheme-less on an allowed host: no guessing.
        assert!(matches!(
            parse_input("localhost:8080/a.mp3", &policy),
            Err(InputError::MissingScheme { .. })
        ));
        // Credentials and other schemes stay refused even for allowed hosts.
        assert!(matches!(
            parse_input("http://u:p@localhost:8080/a.mp3", &policy),
            Err(InputError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_input("ftp://localhost:8080/a.mp3", &policy),
            Err(InputError::UnsupportedScheme { .. })
        ));
        // YouTube hosts never become direct URLs.
        assert!(matches!(
            parse_input("https://www.youtube.com/watch?v=dQw4w9WgXcQ", &policy),
            Ok(Input::YouTube { .. })
        ));
        // from_list
        let from = InputPolicy::from_list(" localhost:8080, media.example.org\n[::1]:9000 ,");
        assert_eq!(
            from.allow_hosts,
            vec!["localhost:8080", "media.example.org", "[::1]:9000"]
        );
        // Empty policy refuses everything direct.
        assert!(matches!(
            parse_input("http://localhost:8080/a.mp3", &InputPolicy::default()),
            Err(InputError::PrivateAddress { .. })
        ));
        assert!(matches!(
            parse_input("http://media.example.org/a.mp3", &InputPolicy::default()),
            Err(InputError::HostNotAllowed { .. })
        ));
    }

    /// Class 1 (SSRF): non-public IP literals and `localhost` are refused
    /// with a reason unless allow-listed exactly; redirect targets and DNS
    /// answers are checked against the same policy.
    #[test]
    fn ssrf_private_literals_redirects_and_dns() {
        let none = InputPolicy::default();
        let cases: &[(&str, &str)] = &[
            ("http://127.0.0.1/a.mp3", "127.0.0.1 is a loopback address"),
            (
                "http://127.1.2.3:8080/a.mp3",
                "127.1.2.3:8080 is a loopback address",
            ),
            ("http://10.0.0.5/a.mp3", "10.0.0.5 is a private address"),
            ("http://172.16.3.4/a.mp3", "172.16.3.4 is a private address"),
            (
                "http://192.168.1.1/a.mp3",
                "192.168.1.1 is a private address",
            ),
            (
                "http://169.254.169.254/latest/meta-data/",
                "169.254.169.254 is a link-local address",
            ),
            (
                "http://100.64.0.1/a.mp3",
                "100.64.0.1 is a carrier-grade NAT address",
            ),
            (
                "http://0.0.0.0:80/a.mp3",
                "0.0.0.0 is a unspecified address",
            ),
            ("http://[::1]/a.mp3", "[::1] is a loopback address"),
            (
                "http://[fe80::1]/a.mp3",
                "[fe80::1] is a link-local address",
            ),
            (
                "http://[fd00::1]/a.mp3",
                "[fd00::1] is a unique-local (private) address",
            ),
            (
                "http://[::ffff:127.0.0.1]/a.mp3",
                "[::ffff:7f00:1] is a loopback address",
            ),
            ("http://localhost/a.mp3", "localhost is a loopback address"),
            (
                "http://api.localhost/a.mp3",
                "api.localhost is a loopback address",
            ),
            // Alternative spellings the URL parser normalizes to 127.0.0.1 / 10.0.0.1.
            ("http://2130706433/a.mp3", "127.0.0.1 is a loopback address"),
            ("http://0x7f.1/a.mp3", "127.0.0.1 is a loopback address"),
            ("http://012.0.0.1/a.mp3", "10.0.0.1 is a private address"),
            ("127.0.0.1/a.mp3", "127.0.0.1 is a loopback address"),
        ];
        for (input, want) in cases {
            let err = parse_input(input, &none).unwrap_err();
            assert_eq!(kind(&err), Kind::Private, "{input}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(want), "{input}: {msg}");
            assert!(msg.starts_with("host "), "{msg}");
        }
        // Public hosts not on the list stay HostNotAllowed.
        for input in ["http://8.8.8.8/a.mp3", "https://[2606:4700::1]/a.mp3"] {
            assert_eq!(
                kind(&parse_input(input, &none).unwrap_err()),
                Kind::Host,
                "{input}"
            );
        }
        // Explicitly allowed private hosts are accepted.
        let lan = InputPolicy::from_list("127.0.0.1:8080, 10.0.0.5, [::1]");
        for ok in [
            "http://127.0.0.1:8080/a.mp3",
            "http://10.0.0.5/a.mp3",
            "http://[::1]:1234/a.mp3",
        ] {
            assert!(
                matches!(parse_input(ok, &lan), Ok(Input::DirectUrl { .. })),
                "{ok}"
            );
        }
        // Redirect targets: only allowed hosts, only http(s), no credentials.
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(lan
            .check_fetch_url(&u("http://127.0.0.1:8080/b.mp3"))
            .is_ok());
        for (target, k) in [
            ("http://169.254.169.254/latest/meta-data/", Kind::Private),
            ("http://127.0.0.1:9999/x", Kind::Private),
            ("http://localhost:8080/x", Kind::Private),
            ("https://evil.example/x.mp3", Kind::Host),
            ("https://www.youtube.com/watch?v=dQw4w9WgXcQ", Kind::Host),
            ("ftp://127.0.0.1:8080/x", Kind::Scheme),
        ] {
            let e = lan.check_fetch_url(&u(target)).unwrap_err();
            assert_eq!(kind(&e), k, "{target}: {e}");
        }
        assert!(matches!(
            lan.check_fetch_url(&u("http://a:b@127.0.0.1:8080/x")),
            Err(InputError::InvalidUrl(_))
        ));
        // DNS answers: a public name resolving to a non-public address is refused
        // unless the address itself is listed; public answers pass.
        let named = InputPolicy::from_list("media.example.org, 10.0.0.5");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(named
            .check_resolved("media.example.org", ip("93.184.216.34"))
            .is_ok());
        assert!(named
            .check_resolved("media.example.org", ip("10.0.0.5"))
            .is_ok());
        let e = named
            .check_resolved("media.example.org", ip("169.254.169.254"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "host media.example.org (169.254.169.254) is a link-local address; \
             private, loopback and link-local addresses are refused unless allowed explicitly with `--allow-host`"
        );
        assert!(named
            .check_resolved("media.example.org", ip("127.0.0.1"))
            .is_err());
        assert!(named
            .check_resolved("media.example.org", ip("::1"))
            .is_err());
        assert!(named.check_resolved("localhost", ip("127.0.0.1")).is_ok());
        // ip_class on the edges of each range.
        for (a, want) in [
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("169.253.255.255", None),
            ("1.1.1.1", None),
            ("2a00:1450::1", None),
            ("224.0.0.1", Some("multicast/reserved")),
            ("255.255.255.255", Some("multicast/reserved")),
            ("fe80::abcd", Some("link-local")),
            ("::", Some("unspecified")),
        ] {
            assert_eq!(ip_class(ip(a)), want, "{a}");
        }
    }

    /// Class 1 (URL forms): `&list=` on a watch URL keeps only that video;
    /// an id starting with `-` is accepted inside a URL and normalized into
    /// the canonical URL (never a bare argument).
    #[test]
    fn watch_with_list_and_dash_ids() {
        let pol = InputPolicy::default();
        for (input, id) in [
            ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=PLx0sYbCqOb8TBPRdmBHs5Iftvv9TPboYG&index=3", "dQw4w9WgXcQ"),
            ("https://www.youtube.com/watch?list=PL1&v=dQw4w9WgXcQ", "dQw4w9WgXcQ"),
            ("https://youtu.be/-bcdefghij0?list=PL1", "-bcdefghij0"),
            ("https://www.youtube.com/watch?v=--exec_rm_x", "--exec_rm_x"),
        ] {
            match parse_input(input, &pol) {
                Ok(Input::YouTube { video_id, url }) => {
                    assert_eq!(video_id, id);
                    assert_eq!(url, format!("https://www.youtube.com/watch?v={id}"));
                }
                other => panic!("{input}: {other:?}"),
            }
        }
        assert!(parse_input("--exec_rm_x", &pol).is_err());
    }

    fn temp_file(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tubescribe-input-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, b"not really audio").unwrap();
        p
    }

    #[test]
    fn local_files() {
        let p = temp_file("talk.mp3");
        let canon = std::fs::canonicalize(&p).unwrap();
        let pol = InputPolicy::default();
        match parse_input(p.to_str().unwrap(), &pol).unwrap() {
            Input::LocalFile { path } => assert_eq!(path, canon),
            other => panic!("{other:?}"),
        }
        // file:// URL
        let furl = Url::from_file_path(&canon).unwrap();
        match parse_input(furl.as_str(), &pol).unwrap() {
            Input::LocalFile { path } => assert_eq!(path, canon),
            other => panic!("{other:?}"),
        }
        // A file whose name is a valid bare id wins over the id. Created in
        // the current directory (no set_current_dir: tests run in parallel);
        // the name is unique per process and removed by the guard.
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                std::fs::remove_file(&self.0).ok();
            }
        }
        let name = format!("fw{:09}", std::process::id() % 1_000_000_000);
        assert_eq!(name.len(), 11);
        std::fs::write(&name, b"x").unwrap();
        let _guard = Rm(PathBuf::from(&name));
        assert!(matches!(
            parse_input(&name, &pol),
            Ok(Input::LocalFile { .. })
        ));
        assert!(parse_youtube_url(&name).is_ok());
        let dir = p.parent().unwrap().to_owned();
        // Remote submissions never look at the disk: the same name is a YouTube id, and every
        // path form (existing, missing, directory, file: URL) gets the same refusal.
        let remote = InputPolicy {
            remote: true,
            ..Default::default()
        };
        match parse_input(&name, &remote).unwrap() {
            Input::YouTube { video_id, .. } => assert_eq!(video_id, name),
            other => panic!("{other:?}"),
        }
        for path in [
            p.to_str().unwrap(),
            dir.to_str().unwrap(),
            "/definitely/not/here.wav",
            "nope.wav",
            furl.as_str(),
        ] {
            assert!(
                matches!(
                    parse_input(path, &remote),
                    Err(InputError::LocalFileRefused)
                ),
                "{path}"
            );
        }
        // Missing file and missing file:// URL
        let missing = dir.join("nope.wav");
        let err = parse_input(missing.to_str().unwrap(), &pol).unwrap_err();
        assert!(matches!(err, InputError::FileNotFound { .. }));
        assert!(err.to_string().contains("nope.wav"), "{err}");
        let murl = Url::from_file_path(&missing).unwrap();
        assert!(matches!(
            parse_input(murl.as_str(), &pol),
            Err(InputError::FileNotFound { .. })
        ));
        // Directory
        assert!(matches!(
            parse_input(dir.to_str().unwrap(), &pol),
            Err(InputError::NotAFile { .. })
        ));
        // Remote file URL
        assert!(matches!(
            parse_input("file://otherhost/etc/passwd", &pol),
            Err(InputError::InvalidUrl(_))
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    fn valid_job_fragment(k: &str) -> bool {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !k.chars().all(|c| c.is_ascii_digit())
    }

    #[test]
    fn source_keys() {
        let pol = InputPolicy {
            allow_hosts: vec!["localhost:8080".into()],
            ..Default::default()
        };
        let a = parse_input("https://youtu.be/dQw4w9WgXcQ?t=3", &pol).unwrap();
        let b = parse_input("youtube.com/watch?list=PL1&v=dQw4w9WgXcQ", &pol).unwrap();
        assert_eq!(a.source_key(), "yt-dQw4w9WgXcQ");
        assert_eq!(a.source_key(), b.source_key());
        let digits = parse_input("12345678901", &pol).unwrap();
        assert_eq!(digits.source_key(), "yt-12345678901");
        assert!(valid_job_fragment(&digits.source_key()));

        let u = parse_input("http://localhost:8080/a.mp3", &pol).unwrap();
        let k = u.source_key();
        assert!(k.starts_with("url-") && k.len() == 4 + 16, "{k}");
        assert_eq!(
            k,
            parse_input("HTTP://LOCALHOST:8080/a.mp3", &pol)
                .unwrap()
                .source_key()
        );
        assert_ne!(
            k,
            parse_input("http://localhost:8080/b.mp3", &pol)
                .unwrap()
                .source_key()
        );
        // Pinned value: sha256("http://localhost:8080/a.mp3")[..16]
        assert_eq!(
            k,
            format!(
                "url-{}",
                &hex::encode(Sha256::digest(b"http://localhost:8080/a.mp3"))[..16]
            )
        );

        let p = temp_file("key.wav");
        let f1 = parse_input(p.to_str().unwrap(), &pol).unwrap();
        let f2 = parse_input(
            Url::from_file_path(std::fs::canonicalize(&p).unwrap())
                .unwrap()
                .as_str(),
            &pol,
        )
        .unwrap();
        assert_eq!(f1.source_key(), f2.source_key());
        assert!(f1.source_key().starts_with("file-") && f1.source_key().len() == 5 + 16);
        // The same path with other contents (size or mtime changed) is another source.
        let before = f1.source_key();
        std::fs::write(&p, b"RIFF changed contents").unwrap();
        assert_ne!(
            parse_input(p.to_str().unwrap(), &pol).unwrap().source_key(),
            before
        );
        for key in [a.source_key(), k, f1.source_key()] {
            assert!(valid_job_fragment(&key), "{key}");
        }
        let lf = Input::LocalFile {
            path: PathBuf::from("/a/b.wav"),
        };
        assert_eq!(
            lf.source_key(),
            format!("file-{}", &hex::encode(Sha256::digest(b"/a/b.wav"))[..16])
        );
        // An upload is its content: another path with the same bytes is the same source.
        let sha = hex::encode(Sha256::digest(b"RIFF"));
        let up = |p: &str| Input::Upload {
            sha256: sha.clone(),
            path: PathBuf::from(p),
        };
        assert_eq!(
            up("/u/1/a.wav").source_key(),
            format!("upload-{}", &sha[..16])
        );
        assert_eq!(up("/u/1/a.wav").source_key(), up("/u/2/b.mp3").source_key());
        assert!(valid_job_fragment(&up("/x").source_key()));
        std::fs::remove_file(p).ok();
    }
}
