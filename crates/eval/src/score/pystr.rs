//! The few Python string semantics the harnesses' scoring code relies on, so that a rule ported
//! from Python gives Python's answer: `str.strip()`'s whitespace, `str.strip(c)`, positions
//! counted in characters (`find`/`rfind`), `str.isalpha`, `float()` and `round(x, 2)`, and a
//! reader for the Python list literals some datasets store as strings (`"['a', 'b']"`).

/// Python's `str.isspace` (what `str.strip()` and `str.split()` remove): Unicode white space
/// plus the four ASCII separators `\x1c`..`\x1f`.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// `s.strip()`.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `s.split()`: the words between runs of white space.
pub fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|w| !w.is_empty())
}

/// Python's `str.isalpha` for one character (letters: categories L*; Rust's `is_alphabetic` also
/// admits letter numbers and some marks, which no answer here hinges on).
pub fn is_alpha(c: char) -> bool {
    c.is_alphabetic()
}

/// `s.strip(c1)`, then `.strip(c2)`, …: each character stripped from both ends in turn.
pub fn strip_each(s: &str, chars: &[char]) -> String {
    chars.iter().fold(s, |s, c| s.trim_matches(*c)).to_string()
}

/// `haystack.find(needle, start)` on characters.
pub fn find(haystack: &[char], needle: &[char], start: usize) -> Option<usize> {
    if needle.len() > haystack.len() {
        return None;
    }
    (start..=haystack.len() - needle.len()).find(|&i| haystack[i..i + needle.len()] == *needle)
}

/// `haystack.rfind(needle)` on characters.
pub fn rfind(haystack: &[char], needle: &[char]) -> Option<usize> {
    if needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len())
        .rev()
        .find(|&i| haystack[i..i + needle.len()] == *needle)
}

/// The characters of `s`.
pub fn chars(s: &str) -> Vec<char> {
    s.chars().collect()
}

/// Python's `float(s)`: surrounding white space, a sign, digits with single underscores between
/// them, `inf`/`infinity`/`nan` in any case. `None` where Python raises `ValueError`.
pub fn float(s: &str) -> Option<f64> {
    let t = strip(s);
    let c = chars(t);
    for (i, &ch) in c.iter().enumerate() {
        if ch == '_' {
            let digit_before = i > 0 && c[i - 1].is_ascii_digit();
            let digit_after = c.get(i + 1).is_some_and(char::is_ascii_digit);
            if !(digit_before && digit_after) {
                return None;
            }
        }
    }
    let cleaned: String = c.into_iter().filter(|&ch| ch != '_').collect();
    if cleaned.is_empty() || !cleaned.is_ascii() {
        return None;
    }
    cleaned.parse::<f64>().ok()
}

/// Python's `round(x, 2)`: the closest two-decimal value, read back as a float (Python rounds
/// the exact binary value, as Rust's formatting does).
pub fn round2(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.2}").parse().unwrap_or(x)
}

/// A Python list literal of strings (`"['a', \"b's\"]"`, as `ast.literal_eval` reads it); also a
/// bare string, read as a list of one. `None` for anything else.
pub fn string_list(s: &str) -> Option<Vec<String>> {
    let t = strip(s);
    let inner = t.strip_prefix('[').and_then(|t| t.strip_suffix(']'))?;
    let c = chars(inner);
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < c.len() && is_space(c[i]) {
            i += 1;
        }
        if i == c.len() {
            return Some(out);
        }
        let (value, next) = quoted(&c, i)?;
        out.push(value);
        i = next;
        while i < c.len() && is_space(c[i]) {
            i += 1;
        }
        match c.get(i) {
            None => return Some(out),
            Some(',') => i += 1,
            Some(_) => return None,
        }
    }
}

/// A Python string literal starting at `c[i]` (`'…'` or `"…"`, with the common escapes); the
/// value and the index after it.
fn quoted(c: &[char], i: usize) -> Option<(String, usize)> {
    let quote = *c.get(i).filter(|q| matches!(q, '\'' | '"'))?;
    let mut out = String::new();
    let mut j = i + 1;
    while j < c.len() {
        match c[j] {
            q if q == quote => return Some((out, j + 1)),
            '\\' => {
                let e = *c.get(j + 1)?;
                j += 2;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '0' => out.push('\0'),
                    'x' | 'u' | 'U' => {
                        let width = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = c.get(j..j + width)?.iter().collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        j += width;
                    }
                    '\n' => {}
                    '\\' | '\'' | '"' => out.push(e),
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            }
            ch => {
                out.push(ch);
                j += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_floats_and_rounding() {
        assert_eq!(float(" 1_000.5 "), Some(1000.5));
        assert_eq!(float("1__0"), None);
        assert_eq!(float("_1"), None);
        assert_eq!(float("1e3"), Some(1000.0));
        assert_eq!(float(".5"), Some(0.5));
        assert!(float("nan").unwrap().is_nan());
        assert_eq!(float("Infinity"), Some(f64::INFINITY));
        assert_eq!(float("1,000"), None);
        assert_eq!(float("abc"), None);
        assert_eq!(round2(2.675), 2.67);
        assert_eq!(round2(0.125), 0.12);
        assert_eq!(round2(0.375), 0.38);
        assert_eq!(round2(-1.005), -1.0);
    }

    #[test]
    fn python_list_literals() {
        assert_eq!(
            string_list(r#"['$6', "it's", 'a\'b', '\u00e9']"#).unwrap(),
            ["$6", "it's", "a'b", "é"]
        );
        assert_eq!(string_list("[]").unwrap(), Vec::<String>::new());
        assert_eq!(string_list("['a',]").unwrap(), ["a"]);
        assert!(string_list("['a' 'b']").is_none());
        assert!(string_list("plain").is_none());
    }

    #[test]
    fn character_positions() {
        let h = chars("é (A) (A)");
        assert_eq!(rfind(&h, &chars("(A)")), Some(6));
        assert_eq!(find(&h, &chars("(A)"), 0), Some(2));
        assert_eq!(find(&h, &chars("(B)"), 0), None);
        assert_eq!(strip_each(".,A.,", &[',', '.']), ",A");
        assert_eq!(strip("\x1c a \u{3000}"), "a");
    }
}
