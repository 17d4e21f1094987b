//! `UNSAFE.md` must list every unsafe site of `src/`, and only those.
//!
//! The test scans every `.rs` file under `src/` (comments, string and char literals blanked
//! out, so `#![forbid(unsafe_op_in_unsafe_fn)]` or a doc sentence about `unsafe {` is not a
//! site) for `unsafe { .. }` blocks, `unsafe fn`s (declared or defined, `extern "C"` too),
//! `unsafe impl`s, `unsafe extern` blocks and `unsafe trait`s, and names each site:
//! - a block or extern block: the innermost enclosing `fn` (`<module>` outside any; a closure's
//!   block is its function's), macro metavariables as written (`$peak`);
//! - an `unsafe fn`: the function itself;
//! - an `unsafe impl X for Y`: the type `Y` without its path and generics (a row may spell the
//!   impl out, e.g. `unsafe impl Sync for Exec<'_> {}`; its type is what counts);
//! - an `unsafe trait`: the trait.
//!
//! A row of `UNSAFE.md` is ``| `file`: `name` | kind | invariant |`` with kind one of `block`,
//! `unsafe fn`, `impl`, `extern`, `unsafe trait`, one site per row (text after the name, such
//! as "(table entry)", is a remark). Checked:
//! - every (file, name, kind) has as many rows as the source has sites (missing rows and rows
//!   whose site went away are both reported, with the lines to look at);
//! - every row names a file that exists and a function (or impl type, trait) that exists in
//!   it;
//! - every unsafe block, `unsafe impl` and `unsafe extern` block has its own `// SAFETY`
//!   comment, on its line or just above it (up to [`SAFETY_REACH`] lines of code between, as
//!   for a block inside a statement, but no other unsafe site and no `fn` header);
//! - every `unsafe fn` has a `# Safety` section in its doc comment, except the methods of a
//!   trait whose doc has one and those of a trait impl headed by a `// SAFETY` comment (the
//!   `Simd` implementations).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Lines of code allowed between a `// SAFETY` comment and the unsafe block it covers.
const SAFETY_REACH: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Block,
    Fn,
    Impl,
    Extern,
    Trait,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Block => "block",
            Kind::Fn => "unsafe fn",
            Kind::Impl => "impl",
            Kind::Extern => "extern",
            Kind::Trait => "unsafe trait",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [Kind::Block, Kind::Fn, Kind::Impl, Kind::Extern, Kind::Trait]
            .into_iter()
            .find(|k| k.label() == s)
    }
}

#[derive(Debug, Clone)]
struct Site {
    name: String,
    kind: Kind,
    /// 1-based.
    line: usize,
    /// Its `SAFETY` comment or `# Safety` section, on one line (empty when it has none).
    why: String,
}

/// A file split into code (comments and literals blanked, newlines kept) and, per line, the
/// text of its comments.
struct Lexed {
    code: Vec<u8>,
    /// Per line (0-based): the code, the comment text, the source.
    code_lines: Vec<String>,
    comments: Vec<String>,
    lines: Vec<String>,
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn lex(src: &str) -> Lexed {
    let s = src.as_bytes();
    let n = s.len();
    let mut code = s.to_vec();
    let lines: Vec<String> = src.lines().map(str::to_owned).collect();
    let mut comments = vec![String::new(); lines.len() + 1];
    let mut line = 0usize;
    let mut i = 0usize;
    // Blanks `code[a..b]`, keeping newlines; with `comment`, appends the text to its lines.
    let mut blank = |code: &mut Vec<u8>, a: usize, b: usize, line: &mut usize, comment: bool| {
        for j in a..b {
            if s[j] == b'\n' {
                *line += 1;
            } else {
                if comment {
                    comments[*line].push(s[j] as char);
                }
                code[j] = b' ';
            }
        }
    };
    while i < n {
        let c = s[i];
        let prev_ident = i > 0 && is_ident(s[i - 1]);
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c == b'/' && i + 1 < n && s[i + 1] == b'/' {
            let end = s[i..].iter().position(|&b| b == b'\n').map_or(n, |p| i + p);
            blank(&mut code, i, end, &mut line, true);
            i = end;
        } else if c == b'/' && i + 1 < n && s[i + 1] == b'*' {
            let (mut depth, mut j) = (0usize, i);
            while j < n {
                if s[j] == b'/' && j + 1 < n && s[j + 1] == b'*' {
                    depth += 1;
                    j += 2;
                } else if s[j] == b'*' && j + 1 < n && s[j + 1] == b'/' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut code, i, j, &mut line, true);
            i = j;
        } else if (c == b'r' || (c == b'b' && i + 1 < n && s[i + 1] == b'r')) && !prev_ident && {
            let k = if c == b'r' { i + 1 } else { i + 2 };
            let hashes = s[k..].iter().take_while(|&&b| b == b'#').count();
            k + hashes < n && s[k + hashes] == b'"'
        } {
            // Raw string r"..", r#".."#, br"..".
            let k = if c == b'r' { i + 1 } else { i + 2 };
            let hashes = s[k..].iter().take_while(|&&b| b == b'#').count();
            let body = k + hashes + 1;
            let mut j = body;
            while j < n {
                if s[j] == b'"'
                    && s[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&b| b == b'#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            blank(&mut code, i, j.min(n), &mut line, false);
            i = j;
        } else if c == b'"' {
            let mut j = i + 1;
            while j < n && s[j] != b'"' {
                j += if s[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut code, i, (j + 1).min(n), &mut line, false);
            i = j + 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\'', '\u{..}') or a lifetime / label ('a).
            if i + 1 < n && s[i + 1] == b'\\' {
                let mut j = i + 3;
                while j < n && s[j] != b'\'' {
                    j += 1;
                }
                blank(&mut code, i, (j + 1).min(n), &mut line, false);
                i = j + 1;
            } else {
                let ch_len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                let close = i + 1 + ch_len;
                if close < n && s[close] == b'\'' {
                    blank(&mut code, i, close + 1, &mut line, false);
                    i = close + 1;
                } else {
                    i += 1;
                }
            }
        } else {
            i += 1;
        }
    }
    let code_lines = String::from_utf8_lossy(&code)
        .split('\n')
        .map(str::to_owned)
        .collect();
    Lexed {
        code,
        code_lines,
        comments,
        lines,
    }
}

#[derive(Debug, Clone)]
struct Tok {
    text: String,
    /// 0-based.
    line: usize,
}

fn tokens(code: &[u8]) -> Vec<Tok> {
    let mut out = Vec::new();
    let (mut i, mut line) = (0usize, 0usize);
    while i < code.len() {
        let c = code[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if is_ident(c) || c == b'$' {
            let start = i;
            i += 1;
            while i < code.len() && is_ident(code[i]) {
                i += 1;
            }
            out.push(Tok {
                text: String::from_utf8_lossy(&code[start..i]).into_owned(),
                line,
            });
        } else {
            // Punctuation, one byte at a time (`::` is two `:`); non-ASCII is skipped.
            if c.is_ascii() {
                out.push(Tok {
                    text: (c as char).to_string(),
                    line,
                });
            }
            i += 1;
        }
    }
    out
}

#[derive(Debug)]
enum Scope {
    Fn(String),
    /// A `macro_rules!` definition (named `name!`).
    Macro(String),
    /// A trait whose doc comment has a `# Safety` section (or not).
    Trait(bool),
    /// A trait impl headed by a `// SAFETY` comment (or not).
    TraitImpl(bool),
    Other,
}

enum Pending {
    Fn(String),
    Macro(String),
    Trait(bool),
    TraitImpl(bool),
}

/// The sites of one file, the names (fns, impl types, traits) it defines, and the problems
/// with its `SAFETY` comments and `# Safety` sections.
struct FileScan {
    sites: Vec<Site>,
    names: BTreeSet<String>,
    problems: Vec<String>,
}

fn is_word(t: &Tok) -> bool {
    let b = t.text.as_bytes()[0];
    is_ident(b) || b == b'$'
}

/// The `// SAFETY` comment on line `line` (0-based) or above it, with at most
/// [`SAFETY_REACH`] lines of code in between and no other unsafe site or `fn` header: its text
/// from `SAFETY` to the end of its comment block, on one line.
fn safety_comment(lx: &Lexed, line: usize) -> Option<String> {
    let mut code_lines = 0;
    for l in (0..=line).rev() {
        // Never a comment above another unsafe site or a function header: that one is theirs.
        if l != line
            && tokens(lx.code_lines[l].as_bytes())
                .iter()
                .any(|t| t.text == "unsafe" || t.text == "fn")
        {
            return None;
        }
        if let Some(at) = lx.comments[l].find("SAFETY") {
            let mut text = lx.comments[l][at..].to_owned();
            for k in l + 1..lx.comments.len() {
                let c = lx.comments[k].trim();
                if c.is_empty() || !lx.code_lines[k].trim().is_empty() || c.contains("SAFETY") {
                    break;
                }
                text.push(' ');
                text.push_str(c.trim_start_matches('/').trim());
            }
            return Some(one_line(&text));
        }
        if l != line && !lx.code_lines[l].trim().is_empty() {
            code_lines += 1;
            if code_lines > SAFETY_REACH {
                return None;
            }
        }
    }
    None
}

/// `text` with its whitespace runs made single spaces, `SAFETY:` and `SAFETY (..):` prefixes
/// dropped.
fn one_line(text: &str) -> String {
    let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let t = t.strip_prefix("SAFETY").unwrap_or(&t).trim_start();
    let t = if t.starts_with('(') {
        t.split_once("):").map_or(t, |(_, r)| r)
    } else {
        t
    };
    t.trim_start_matches(':').trim().to_owned()
}

/// Is there a `// SAFETY` comment directly above line `line` (0-based), with only attributes,
/// doc comments and blank lines in between?
fn safety_comment_above(lx: &Lexed, line: usize) -> bool {
    for l in (0..line).rev() {
        if lx.comments[l].contains("SAFETY") {
            return true;
        }
        let code = lx.code_lines[l].trim();
        if !(code.is_empty() || code.starts_with("#[")) {
            return false;
        }
    }
    false
}

/// The doc comment (`///` lines; attributes, also over several lines, and plain comments
/// skipped) above line `line` (0-based), the first line of an item.
fn doc_above(lx: &Lexed, line: usize) -> String {
    let mut doc = Vec::new();
    let mut l = line;
    while l > 0 {
        l -= 1;
        let t = lx.lines[l].trim_start();
        let code = lx.code_lines[l].trim();
        if t.starts_with("///") {
            doc.push(t.trim_start_matches('/').trim());
        } else if t.starts_with("#[") || t.starts_with("//") {
            continue;
        } else if code.ends_with(']') {
            // The last line of an attribute over several lines: back to its `#[`.
            match (l.saturating_sub(12)..l)
                .rev()
                .find(|&k| lx.code_lines[k].trim_start().starts_with("#["))
            {
                Some(k) => l = k,
                None => break,
            }
        } else {
            break;
        }
    }
    doc.reverse();
    doc.join("\n")
}

/// The text of the `# Safety` section of `doc`, on one line.
fn safety_section(doc: &str) -> Option<String> {
    let (_, rest) = doc.split_once("# Safety")?;
    let end = rest.find("\n#").unwrap_or(rest.len());
    Some(one_line(&rest[..end]))
}

fn scan(src: &str) -> FileScan {
    let lx = lex(src);
    let toks = tokens(&lx.code);
    let mut scan = FileScan {
        sites: Vec::new(),
        names: BTreeSet::new(),
        problems: Vec::new(),
    };
    let mut stack: Vec<Scope> = Vec::new();
    // The item whose body the next `{` opens, and the ()/[] depth at its keyword: a `;` at
    // that depth before any `{` makes it a declaration (a trait method's).
    let mut pending: Option<(Pending, i32)> = None;
    let mut depth = 0i32;
    let text = |i: usize| toks.get(i).map_or("", |t| t.text.as_str());
    // An `impl` at item position (not `impl Trait` in a type).
    let item_start = |i: usize| {
        i == 0
            || matches!(
                text(i - 1),
                "}" | ";" | "{" | "]" | "unsafe" | "pub" | "default"
            )
            || (text(i - 1) == ")" && prev_is_vis(&toks, i - 1))
    };
    // The innermost enclosing fn; outside any, the innermost `macro_rules!` (a macro that
    // expands into a function body), else `<module>`.
    let enclosing_fn = |stack: &Vec<Scope>| -> String {
        let innermost = |macros: bool| {
            stack.iter().rev().find_map(|s| match s {
                Scope::Fn(n) if !macros => Some(n.clone()),
                Scope::Macro(n) if macros => Some(n.clone()),
                _ => None,
            })
        };
        innermost(false)
            .or_else(|| innermost(true))
            .unwrap_or_else(|| "<module>".to_owned())
    };
    let mut i = 0usize;
    while i < toks.len() {
        let t = text(i);
        match t {
            "fn" if toks.get(i + 1).is_some_and(is_word) => {
                let name = text(i + 1).to_owned();
                scan.names.insert(name.clone());
                pending = Some((Pending::Fn(name), depth));
                i += 2;
                continue;
            }
            "macro_rules" if text(i + 1) == "!" && toks.get(i + 2).is_some_and(is_word) => {
                let name = format!("{}!", text(i + 2));
                scan.names.insert(name.clone());
                pending = Some((Pending::Macro(name), depth));
                i += 3;
                continue;
            }
            "trait" if toks.get(i + 1).is_some_and(is_word) => {
                let name = text(i + 1).to_owned();
                scan.names.insert(name);
                let doc = doc_above(&lx, item_line(&toks, i));
                pending = Some((Pending::Trait(doc.contains("# Safety")), depth));
            }
            "impl" if item_start(i) => {
                let (ty, is_trait_impl) = impl_type(&toks, i);
                scan.names.insert(ty);
                pending = is_trait_impl.then(|| {
                    let c = safety_comment_above(&lx, item_line(&toks, i));
                    (Pending::TraitImpl(c), depth)
                });
            }
            "(" | "[" => depth += 1,
            ")" | "]" => depth -= 1,
            ";" if pending.as_ref().is_some_and(|p| p.1 == depth) => {
                pending = None;
            }
            "{" => {
                let p = match pending.take() {
                    Some((p, d)) if d == depth => Some(p),
                    other => {
                        pending = other;
                        None
                    }
                };
                stack.push(match p {
                    Some(Pending::Fn(n)) => Scope::Fn(n),
                    Some(Pending::Macro(n)) => Scope::Macro(n),
                    Some(Pending::Trait(d)) => Scope::Trait(d),
                    Some(Pending::TraitImpl(c)) => Scope::TraitImpl(c),
                    None => Scope::Other,
                });
            }
            "}" => {
                stack.pop();
            }
            "unsafe" => {
                let line = toks[i].line;
                let next = text(i + 1);
                let site = match next {
                    "{" => Some((Kind::Block, enclosing_fn(&stack))),
                    "impl" => Some((Kind::Impl, impl_type(&toks, i + 1).0)),
                    "trait" => Some((Kind::Trait, text(i + 2).to_owned())),
                    "fn" if toks.get(i + 2).is_some_and(is_word) => {
                        Some((Kind::Fn, text(i + 2).to_owned()))
                    }
                    "extern" if text(i + 2) == "fn" && toks.get(i + 3).is_some_and(is_word) => {
                        Some((Kind::Fn, text(i + 3).to_owned()))
                    }
                    "extern" if text(i + 2) == "{" => Some((Kind::Extern, enclosing_fn(&stack))),
                    // `unsafe fn(..)` pointer types, `#[unsafe(no_mangle)]`.
                    _ => None,
                };
                if let Some((kind, name)) = site {
                    let lno = line + 1;
                    let why = match kind {
                        Kind::Block | Kind::Impl | Kind::Extern => {
                            let why = safety_comment(&lx, line);
                            if why.is_none() {
                                scan.problems.push(format!(
                                    "line {lno}: unsafe {} in `{name}` has no `// SAFETY:` comment on or just above it",
                                    kind.label()
                                ));
                            }
                            why
                        }
                        Kind::Fn | Kind::Trait => {
                            let why = safety_section(&doc_above(&lx, item_line(&toks, i)));
                            let covered = why.is_some()
                                || match stack.last() {
                                    Some(Scope::Trait(d)) => *d,
                                    Some(Scope::TraitImpl(c)) => *c,
                                    _ => false,
                                };
                            if !covered {
                                scan.problems.push(format!(
                                    "line {lno}: {} `{name}` has no `# Safety` section in its doc comment",
                                    kind.label()
                                ));
                            }
                            why.or_else(|| {
                                covered.then(|| "as the trait's `# Safety` section".to_owned())
                            })
                        }
                    };
                    scan.sites.push(Site {
                        name,
                        kind,
                        line: lno,
                        why: why.unwrap_or_default(),
                    });
                }
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

/// Is the `)` at token `i` the end of a visibility (`pub(crate)`, `pub(super)`)?
fn prev_is_vis(toks: &[Tok], i: usize) -> bool {
    i >= 3 && toks[i - 3].text == "pub" && toks[i - 2].text == "("
}

/// The line (0-based) of the first token of the item whose keyword is token `i`: back over
/// `pub`, `pub(..)`, `unsafe`, `extern`, `const`, `async`, `default`.
fn item_line(toks: &[Tok], i: usize) -> usize {
    let mut j = i;
    loop {
        if j == 0 {
            break;
        }
        match toks[j - 1].text.as_str() {
            "pub" | "unsafe" | "extern" | "const" | "async" | "default" => j -= 1,
            ")" if prev_is_vis(toks, j - 1) => j -= 4,
            _ => break,
        }
    }
    toks[j].line
}

/// The self type of the impl whose `impl` keyword is token `i` (last path segment, no
/// generics), and whether it is a trait impl (`impl Trait for Type`).
fn impl_type(toks: &[Tok], i: usize) -> (String, bool) {
    let mut j = i + 1;
    let mut angle = 0i32;
    // Skip `impl<..>`.
    if toks.get(j).is_some_and(|t| t.text == "<") {
        loop {
            match toks.get(j).map(|t| t.text.as_str()) {
                Some("<") => angle += 1,
                Some(">") => {
                    angle -= 1;
                    if angle == 0 {
                        j += 1;
                        break;
                    }
                }
                None => break,
                _ => {}
            }
            j += 1;
        }
    }
    // The header runs to `{` or `where` (or `;`); the type follows `for` if there is one.
    let mut end = j;
    while end < toks.len() && !matches!(toks[end].text.as_str(), "{" | ";" | "where") {
        end += 1;
    }
    let header = &toks[j..end];
    let mut depth = 0i32;
    let mut for_at = None;
    for (k, t) in header.iter().enumerate() {
        match t.text.as_str() {
            "<" | "(" | "[" => depth += 1,
            ">" | ")" | "]" => depth -= 1,
            "for" if depth == 0 => {
                for_at = Some(k);
                break;
            }
            _ => {}
        }
    }
    let ty_toks = &header[for_at.map_or(0, |k| k + 1)..];
    let mut last = String::from("?");
    for t in ty_toks {
        match t.text.as_str() {
            "&" | "'" | "mut" | "dyn" | ":" => {}
            "<" | "{" => break,
            s if is_word(t) => last = s.to_owned(),
            _ => {}
        }
    }
    (last, for_at.is_some())
}

struct Row {
    /// 1-based line in UNSAFE.md.
    line: usize,
    file: String,
    name: String,
    kind: Option<Kind>,
    kind_text: String,
}

/// The table rows of UNSAFE.md (``| `file`: `name` | kind | invariant |``).
fn rows(md: &str) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (k, l) in md.lines().enumerate() {
        let line = k + 1;
        let Some(rest) = l.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = l.splitn(4, '|').collect();
        let (site, kind_text) = (cells[1].trim(), cells.get(2).map_or("", |c| c.trim()));
        // `file`: `name` ...
        let parsed = rest.split_once('`').and_then(|(file, after)| {
            let after = after.strip_prefix(": `")?;
            let (name, _) = after.split_once('`')?;
            Some((file.to_owned(), name.to_owned()))
        });
        let Some((file, mut name)) = parsed else {
            problems.push(format!(
                "UNSAFE.md line {line}: the site cell `{site}` is not ``file`: `name``"
            ));
            continue;
        };
        if name.starts_with("unsafe impl") {
            // Named by the impl's text: its type counts.
            let toks = tokens(name.as_bytes());
            let at = toks.iter().position(|t| t.text == "impl").unwrap_or(0);
            name = impl_type(&toks, at).0;
        }
        let kind = Kind::parse(kind_text);
        if kind.is_none() {
            problems.push(format!(
                "UNSAFE.md line {line}: kind `{kind_text}` is not one of block, unsafe fn, impl, extern, unsafe trait (one site per row)"
            ));
        }
        rows.push(Row {
            line,
            file,
            name,
            kind,
            kind_text: kind_text.to_owned(),
        });
    }
    (rows, problems)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn unsafe_md_lists_every_unsafe_site() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut problems: Vec<String> = Vec::new();
    // (file, name, kind) -> source lines of its sites.
    let mut sites: BTreeMap<(String, String, Kind), Vec<(usize, String)>> = BTreeMap::new();
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .replace('\\', "/");
        let src = std::fs::read_to_string(f).expect("read source");
        let s = scan(&src);
        for p in s.problems {
            problems.push(format!("{rel} {p}"));
        }
        for site in s.sites {
            sites
                .entry((rel.clone(), site.name, site.kind))
                .or_default()
                .push((site.line, site.why));
        }
        names.insert(rel, s.names);
    }
    let total: usize = sites.values().map(Vec::len).sum();
    if std::env::var_os("TD_UNSAFE_ROWS").is_some() {
        // Every site as a row, in source order, for writing UNSAFE.md.
        let mut all: Vec<_> = sites
            .iter()
            .flat_map(|((file, name, kind), found)| {
                found
                    .iter()
                    .map(move |(line, why)| (file, *line, name, kind, why))
            })
            .collect();
        all.sort();
        for (file, _, name, kind, why) in all {
            println!("| `{file}`: `{name}` | {} | {why} |", kind.label());
        }
    }
    assert!(
        total > 100,
        "the scanner found only {total} unsafe sites in src/: it is broken"
    );

    let md = std::fs::read_to_string(root.join("UNSAFE.md")).expect("read UNSAFE.md");
    let (rows, row_problems) = rows(&md);
    problems.extend(row_problems);
    let mut listed: BTreeMap<(String, String, Kind), Vec<usize>> = BTreeMap::new();
    for r in &rows {
        let Some(kind) = r.kind else { continue };
        match names.get(&r.file) {
            None => problems.push(format!(
                "UNSAFE.md line {}: stale row: `{}` is not a file under src/ (row `{}`: `{}` | {})",
                r.line, r.file, r.file, r.name, r.kind_text
            )),
            Some(defined) if !defined.contains(&r.name) => problems.push(format!(
                "UNSAFE.md line {}: stale row: `{}` defines no fn, impl type or trait `{}`",
                r.line, r.file, r.name
            )),
            Some(_) => {}
        }
        listed
            .entry((r.file.clone(), r.name.clone(), kind))
            .or_default()
            .push(r.line);
    }
    for (key, found) in &sites {
        let have = listed.get(key).map_or(0, Vec::len);
        if have < found.len() {
            let (file, name, kind) = key;
            let lines: Vec<usize> = found.iter().map(|f| f.0).collect();
            let mut add = String::new();
            for (_, why) in &found[have..] {
                let _ = write!(
                    add,
                    "\n      | `{file}`: `{name}` | {} | {why} |",
                    kind.label()
                );
            }
            problems.push(format!(
                "missing row: `{file}`: `{name}` has {} {} site(s) (line(s) {lines:?}) but UNSAFE.md has {have} row(s); add:{add}",
                found.len(),
                kind.label(),
            ));
        }
    }
    for (key, lines) in &listed {
        let have = sites.get(key).map_or(0, Vec::len);
        if lines.len() > have && names.get(&key.0).is_some_and(|n| n.contains(&key.1)) {
            let (file, name, kind) = key;
            problems.push(format!(
                "stale row(s): UNSAFE.md lines {lines:?} list {} {} site(s) of `{file}`: `{name}`, the source has {have}",
                lines.len(),
                kind.label()
            ));
        }
    }
    if !problems.is_empty() {
        let mut msg = format!(
            "UNSAFE.md is out of date with src/ ({} problem(s)):\n",
            problems.len()
        );
        for p in &problems {
            let _ = writeln!(msg, "  - {p}");
        }
        panic!("{msg}");
    }
}

#[test]
fn scanner_sees_only_code() {
    let src = r####"
#![forbid(unsafe_op_in_unsafe_fn)]
//! Docs about `unsafe { x }` and `unsafe fn f()`.
const S: &str = "unsafe { not \" code }";
const R: &str = r#"unsafe impl Send for X {}"#;
const C: char = '{';
const B: u8 = b'}';
const Q: char = '\'';

/// Doc.
///
/// # Safety
/// `p` is valid.
#[inline]
pub(crate) unsafe fn f<'a>(p: *const u8) -> &'a u8 {
    // SAFETY: the caller's contract.
    unsafe { &*p }
}

fn g(v: &[u8], table: [u8; 4], cb: unsafe fn(usize)) {
    let h = |i: usize| {
        // SAFETY: in bounds.
        unsafe { *v.get_unchecked(i) }
    };
    /* unsafe { comment /* nested */ } */
    let _ = (h, table, cb);
}

struct P<T>(T);
// SAFETY: plain data.
unsafe impl<T: Copy> Sync for crate::P<T> {}

/// # Safety
/// Implementors: whatever.
unsafe trait Marker {}

/// # Safety
/// Every method: the CPU has the features.
trait Simd {
    unsafe fn zero() -> u8;
}
struct A;
// SAFETY (every method): checked at run time.
impl Simd for A {
    unsafe fn zero() -> u8 {
        // SAFETY: see the impl comment.
        unsafe { 0 }
    }
}
macro_rules! m {
    ($name:ident) => {
        fn $name() {
            let x = 1;
            let y = 2;
            unsafe { x + y }
        }
    };
}
macro_rules! dispatch {
    () => {
        // SAFETY: checked.
        return unsafe { run() };
    };
}
fn k(f: impl Fn() -> u8) -> u8 { f() }
/// Called from C.
///
/// # Safety
/// `p` is NULL or valid.
#[cfg_attr(
    test,
    allow(dead_code)
)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn td_x(p: *const u8) {}
unsafe fn undocumented() {}
"####;
    let s = scan(src);
    let got: Vec<(String, &str, usize)> = s
        .sites
        .iter()
        .map(|x| (x.name.clone(), x.kind.label(), x.line))
        .collect();
    let want = [
        ("f", "unsafe fn", 15),
        ("f", "block", 17),
        ("g", "block", 23),
        ("P", "impl", 31),
        ("Marker", "unsafe trait", 35),
        ("zero", "unsafe fn", 40),
        ("zero", "unsafe fn", 45),
        ("zero", "block", 47),
        ("$name", "block", 55),
        ("dispatch!", "block", 62),
        ("td_x", "unsafe fn", 75),
        ("undocumented", "unsafe fn", 76),
    ];
    let want: Vec<(String, &str, usize)> =
        want.iter().map(|&(n, k, l)| (n.to_owned(), k, l)).collect();
    assert_eq!(got, want);
    for n in [
        "f",
        "g",
        "k",
        "A",
        "P",
        "Simd",
        "Marker",
        "m!",
        "dispatch!",
        "$name",
        "td_x",
    ] {
        assert!(s.names.contains(n), "{n} not among {:?}", s.names);
    }
    assert_eq!(s.sites[1].why, "the caller's contract.");
    assert_eq!(s.sites[0].why, "`p` is valid.");
    assert_eq!(
        s.problems,
        [
            "line 55: unsafe block in `$name` has no `// SAFETY:` comment on or just above it",
            "line 76: unsafe fn `undocumented` has no `# Safety` section in its doc comment",
        ]
    );
}

#[test]
fn rows_are_parsed() {
    let md = "\
| site | kind | invariant |
|---|---|---|
| `src/a.rs`: `f` | unsafe fn | x |
| `src/a.rs`: `unsafe impl<T> Sync for Shared<T> {}` | impl | y |
| `src/a.rs`: `g` (table entry) | block | z |
| `src/a.rs`, `b.rs`: `h` | block | w |
| `src/a.rs`: `k` | unsafe fn + block | v |
";
    let (rows, problems) = rows(md);
    let got: Vec<(usize, &str, &str, Option<Kind>)> = rows
        .iter()
        .map(|r| (r.line, r.file.as_str(), r.name.as_str(), r.kind))
        .collect();
    assert_eq!(
        got,
        [
            (3, "src/a.rs", "f", Some(Kind::Fn)),
            (4, "src/a.rs", "Shared", Some(Kind::Impl)),
            (5, "src/a.rs", "g", Some(Kind::Block)),
            (7, "src/a.rs", "k", None),
        ]
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
}
