//! The Whisper BPE vocabulary as whisper.cpp wants it: raw token bytes.
//!
//! CTranslate2 ships the tokens as GPT-2 "byte-level" strings (`vocabulary.txt`, one token a
//! line, or `vocabulary.json`, a JSON array of strings): every byte is shown as one printable
//! unicode character by GPT-2's `bytes_to_unicode()` table (openai/gpt-2 `src/encoder.py`,
//! also in OpenAI whisper's tokenizer). Inverting that table gives back the raw bytes that
//! whisper.cpp's `convert-pt-to-ggml.py` writes (it reads them from `gpt2.tiktoken`).
//! Only the tokens before `<|endoftext|>` are kept; whisper.cpp creates the special tokens.

use std::collections::HashMap;

/// The special token that ends the ordinary BPE tokens.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// GPT-2's `bytes_to_unicode()` table inverted: unicode char → byte (256 entries).
pub fn unicode_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map.insert(char::from_u32(c).expect("valid char"), b as u8);
    }
    map
}

/// Decodes one byte-level token string into raw bytes, or `None` if it has a character that
/// is not in GPT-2's byte alphabet.
pub fn decode_token(token: &str, table: &HashMap<char, u8>) -> Option<Vec<u8>> {
    token.chars().map(|c| table.get(&c).copied()).collect()
}

/// Parses `vocabulary.txt` (one token per line; `\n` or `\r\n`) into token strings.
pub fn parse_txt(text: &str) -> Vec<String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}

/// Parses `vocabulary.json` (a JSON array of strings) into token strings.
pub fn parse_json(text: &str) -> Result<Vec<String>, String> {
    let mut chars = text.chars().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::Chars>| {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
    };
    let mut out = Vec::new();
    skip_ws(&mut chars);
    if chars.next() != Some('[') {
        return Err("expected '['".into());
    }
    loop {
        skip_ws(&mut chars);
        match chars.next() {
            Some(']') if out.is_empty() => break,
            Some('"') => {}
            other => return Err(format!("expected a string, found {other:?}")),
        }
        let mut s = String::new();
        loop {
            match chars.next().ok_or("unterminated string")? {
                '"' => break,
                '\\' => match chars.next().ok_or("bad escape")? {
                    '"' => s.push('"'),
                    '\\' => s.push('\\'),
                    '/' => s.push('/'),
                    'b' => s.push('\u{8}'),
                    'f' => s.push('\u{c}'),
                    'n' => s.push('\n'),
                    'r' => s.push('\r'),
                    't' => s.push('\t'),
                    'u' => {
                        let hex4 = |it: &mut std::iter::Peekable<std::str::Chars>| {
                            let h: String = it.by_ref().take(4).collect();
                            u32::from_str_radix(&h, 16).map_err(|_| format!("bad \\u escape {h:?}"))
                        };
                        let hi = hex4(&mut chars)?;
                        let cp = if (0xd800..0xdc00).contains(&hi) {
                            if chars.next() != Some('\\') || chars.next() != Some('u') {
                                return Err("lone surrogate".into());
                            }
                            let lo = hex4(&mut chars)?;
                            0x10000 + ((hi - 0xd800) << 10) + (lo.wrapping_sub(0xdc00) & 0x3ff)
                        } else {
                            hi
                        };
                        s.push(char::from_u32(cp).ok_or("bad code point")?);
                    }
                    c => return Err(format!("bad escape \\{c}")),
                },
                c => s.push(c),
            }
        }
        out.push(s);
        skip_ws(&mut chars);
        match chars.next() {
            Some(',') => continue,
            Some(']') => break,
            other => return Err(format!("expected ',' or ']', found {other:?}")),
        }
    }
    Ok(out)
}

/// Decodes the tokens before `<|endoftext|>` into raw bytes. Errors name the first token
/// outside GPT-2's byte alphabet, or a missing `<|endoftext|>`.
pub fn ordinary_tokens(tokens: &[String]) -> Result<Vec<Vec<u8>>, String> {
    let eot = tokens
        .iter()
        .position(|t| t == END_OF_TEXT)
        .ok_or_else(|| format!("no {END_OF_TEXT} token"))?;
    let table = unicode_to_byte();
    tokens[..eot]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            decode_token(t, &table)
                .ok_or_else(|| format!("token {i} {t:?} is not GPT-2 byte-level"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table() {
        let t = unicode_to_byte();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'!'], b'!');
        assert_eq!(t[&'Ġ'], b' '); // U+0120
        assert_eq!(t[&'Ċ'], b'\n'); // U+010A
        assert_eq!(t[&'Ā'], 0); // U+0100
        assert_eq!(t[&'ł'], 0xa0); // U+0142: no-break space
        assert_eq!(t[&'Ń'], 0xad); // U+0143: soft hyphen is the last remapped byte
        assert_eq!(t[&'é'], 0xe9);
    }

    #[test]
    fn decode_tokens() {
        let toks: Vec<String> = ["Hello", "Ġworld", "ĊĊ", "Ã©", END_OF_TEXT, "<|en|>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = ordinary_tokens(&toks).unwrap();
        assert_eq!(
            out,
            vec![
                b"Hello".to_vec(),
                b" world".to_vec(),
                b"\n\n".to_vec(),
                "é".as_bytes().to_vec()
            ]
        );
        assert!(ordinary_tokens(&toks[..2]).is_err());
        assert!(ordinary_tokens(&["a b".to_string(), END_OF_TEXT.to_string()]).is_err());
    }

    #[test]
    fn parse_both_formats() {
        assert_eq!(
            parse_txt("a\nĠb\r\n<|endoftext|>\n"),
            vec!["a", "Ġb", "<|endoftext|>"]
        );
        assert_eq!(
            parse_json(r#" ["a", "\u0120b\"", "\ud83d\ude00", "<|endoftext|>"] "#).unwrap(),
            vec!["a", "Ġb\"", "😀", "<|endoftext|>"]
        );
        assert_eq!(parse_json("[]").unwrap(), Vec::<String>::new());
        assert!(parse_json("[\"a\"").is_err());
    }
}
