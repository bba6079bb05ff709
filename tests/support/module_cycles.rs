//! Which `src/` file modules import which, and the cycles among them, read from the source text
//! (no compiler, no Python).
//!
//! A module *imports* another when its code names an item defined there: through a `use` tree
//! (groups, `self`, `as`, globs) or through a path written inline in code or types
//! (`crate::a::f()`, `super::b::T`, `self::c::X`, or a child module's name). Paths are resolved
//! at file granularity: an inline `mod` counts as part of its file, and a name reached through a
//! re-export (`pub use b::T;` in `a/mod.rs`) counts as an import of `b`, the module that
//! defines it, not of `a`. A re-export is therefore not itself an import. Items under
//! `#[cfg(test)]` are left out: unit tests are not part of the data flow.
//!
//! Limits (a text scan, not name resolution): names brought in by a glob re-export
//! (`pub use b::*`) are not followed; macros' bodies are read as plain code; an item the
//! binary's `main.rs` defines and its modules name as `crate::item` counts as the library
//! root's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path from the crate root, e.g. `["cli", "sample"]`; the root is `[]`.
type ModPath = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// The tokens of `src` with their 1-based line numbers; comments, strings, chars, lifetimes and
/// numbers are dropped.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let is_ident = |ch: char| ch == '_' || ch.is_alphanumeric();
    // Skips from `i` (just past an opening quote) to just past the closing quote.
    let skip_quoted = |i: &mut usize, line: &mut usize, quote: char| {
        while *i < c.len() && c[*i] != quote {
            if c[*i] == '\\' {
                *i += 1;
            }
            if *i < c.len() && c[*i] == '\n' {
                *line += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied().unwrap_or('\0');
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' {
            i += 1;
            skip_quoted(&mut i, &mut line, '"');
        } else if (ch == 'r' || (ch == 'b' && next == 'r'))
            && matches!(c.get(i + 1 + usize::from(ch == 'b')), Some('"' | '#'))
        {
            // Raw string r"…", r#"…"#, br"…": ends at a quote followed by as many hashes.
            i += 1 + usize::from(ch == 'b');
            let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
            if c.get(i + hashes) != Some(&'"') {
                // A raw identifier (r#name): keep the name.
                i += hashes;
                continue;
            }
            i += hashes + 1;
            while i < c.len() {
                if c[i] == '"' && c[i + 1..].iter().take_while(|&&h| h == '#').count() >= hashes {
                    i += 1 + hashes;
                    break;
                }
                line += usize::from(c[i] == '\n');
                i += 1;
            }
        } else if ch == 'b' && (next == '"' || next == '\'') {
            i += 2;
            skip_quoted(&mut i, &mut line, next);
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime / label ('a).
            if next == '\\' || c.get(i + 2) == Some(&'\'') {
                i += 1;
                skip_quoted(&mut i, &mut line, '\'');
            } else {
                i += 1;
                while i < c.len() && is_ident(c[i]) {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && (is_ident(c[i]) || c[i] == '.' && c.get(i + 1) != Some(&'.')) {
                i += 1;
            }
        } else if is_ident(ch) {
            let start = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && next == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// One name a `use` tree brings in.
#[derive(Debug, Clone)]
struct UseItem {
    /// The path as written, e.g. `["super", "seeds", "run"]`.
    path: Vec<String>,
    /// The name it binds (`as` alias or last segment); `None` for a glob.
    name: Option<String>,
}

/// What one file says about other modules, before resolution.
#[derive(Debug, Default)]
struct FileScan {
    /// (scope module, item, line) for `use` declarations without visibility.
    uses: Vec<(ModPath, UseItem, usize)>,
    /// (scope module, item, line) for `pub` / `pub(…)` `use`: re-exports.
    reexports: Vec<(ModPath, UseItem, usize)>,
    /// (scope module, path, line) for paths written in code.
    inline: Vec<(ModPath, Vec<String>, usize)>,
    /// Inline modules (`mod x { … }`) declared in the file.
    inline_mods: Vec<ModPath>,
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

fn is_punct(t: Option<&(Tok, usize)>, p: char) -> bool {
    matches!(t, Some((Tok::Punct(q), _)) if *q == p)
}

/// Parses one use tree at `*i` under `prefix`, appending what it binds to `out`.
fn parse_use_tree(toks: &[(Tok, usize)], i: &mut usize, prefix: &[String], out: &mut Vec<UseItem>) {
    let mut path = prefix.to_vec();
    if matches!(toks.get(*i), Some((Tok::PathSep, _))) {
        *i += 1; // `use ::extern_crate::…`
    }
    loop {
        match toks.get(*i) {
            Some((Tok::Ident(s), _)) => {
                *i += 1;
                // `{self, …}`: the prefix itself, bound by its last segment.
                if s != "self" || path.is_empty() || !prefix.eq(&path) {
                    path.push(s.clone());
                }
                if matches!(toks.get(*i), Some((Tok::PathSep, _))) {
                    *i += 1;
                    continue;
                }
                let mut name = path.last().cloned();
                if ident(toks.get(*i)) == Some("as") {
                    name = ident(toks.get(*i + 1)).map(str::to_string);
                    *i += 2;
                }
                out.push(UseItem { path, name });
                return;
            }
            Some((Tok::Punct('*'), _)) => {
                *i += 1;
                out.push(UseItem { path, name: None });
                return;
            }
            Some((Tok::Punct('{'), _)) => {
                *i += 1;
                while !is_punct(toks.get(*i), '}') && *i < toks.len() {
                    parse_use_tree(toks, i, &path, out);
                    if is_punct(toks.get(*i), ',') {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            _ => return,
        }
    }
}

/// Whether the tokens ending just before `i` are a visibility (`pub`, `pub(crate)`, …).
fn has_visibility(toks: &[(Tok, usize)], i: usize) -> bool {
    if i == 0 {
        return false;
    }
    if ident(toks.get(i - 1)) == Some("pub") {
        return true;
    }
    if !is_punct(toks.get(i - 1), ')') {
        return false;
    }
    let mut j = i - 1;
    while j > 0 && !is_punct(toks.get(j), '(') {
        j -= 1;
    }
    j > 0 && ident(toks.get(j - 1)) == Some("pub")
}

/// Index just past the item starting at `i`: its `;` or its closing `}` at depth 0.
fn skip_item(toks: &[(Tok, usize)], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < toks.len() {
        match toks[i].0 {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']') => depth -= 1,
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            Tok::Punct(';') if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Index just past the attribute `#[…]` or `#![…]` starting at `i`, and whether it is `cfg(test)`.
fn attribute(toks: &[(Tok, usize)], i: usize) -> (usize, bool) {
    let open = i + 1 + usize::from(is_punct(toks.get(i + 1), '!'));
    let end = skip_item(toks, open);
    let body: Vec<&Tok> = toks[open..end].iter().map(|(t, _)| t).collect();
    let cfg_test = body
        == [
            &Tok::Punct('['),
            &Tok::Ident("cfg".into()),
            &Tok::Punct('('),
            &Tok::Ident("test".into()),
            &Tok::Punct(')'),
            &Tok::Punct(']'),
        ];
    (end, cfg_test)
}

/// Scans one file whose module path is `module`.
fn scan_file(module: &ModPath, src: &str) -> FileScan {
    let toks = tokenize(src);
    let mut scan = FileScan::default();
    // One entry per open `{`: the inline module it opens, if any.
    let mut scopes: Vec<Option<String>> = Vec::new();
    let scope = |scopes: &[Option<String>]| -> ModPath {
        let mut m = module.clone();
        m.extend(scopes.iter().flatten().cloned());
        m
    };
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = &toks[i];
        match tok {
            Tok::Punct('#') if is_punct(toks.get(i + 1), '[') || is_punct(toks.get(i + 2), '[') => {
                let (end, cfg_test) = attribute(&toks, i);
                i = end;
                if cfg_test {
                    while is_punct(toks.get(i), '#') {
                        i = attribute(&toks, i).0;
                    }
                    i = skip_item(&toks, i);
                }
                continue;
            }
            Tok::Punct('{') => scopes.push(None),
            Tok::Punct('}') => {
                scopes.pop();
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some(name), true) = (ident(toks.get(i + 1)), is_punct(toks.get(i + 2), '{'))
                {
                    scopes.push(Some(name.to_string()));
                    scan.inline_mods.push(scope(&scopes));
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(kw) if kw == "use" => {
                let here = scope(&scopes);
                let reexport = has_visibility(&toks, i);
                let mut items = Vec::new();
                i += 1;
                parse_use_tree(&toks, &mut i, &[], &mut items);
                for item in items {
                    if reexport {
                        scan.reexports.push((here.clone(), item, *line));
                    } else {
                        scan.uses.push((here.clone(), item, *line));
                    }
                }
                continue;
            }
            Tok::Ident(first)
                if matches!(toks.get(i + 1), Some((Tok::PathSep, _)))
                    && !matches!(i.checked_sub(1).map(|j| &toks[j].0), Some(Tok::PathSep)) =>
            {
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while matches!(toks.get(j), Some((Tok::PathSep, _))) {
                    match ident(toks.get(j + 1)) {
                        Some(s) => path.push(s.to_string()),
                        None => break, // `::<T>` or `::{`
                    }
                    j += 2;
                }
                scan.inline.push((scope(&scopes), path, *line));
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

/// The import graph of a crate's file modules.
pub struct ModuleGraph {
    /// File module → the file it lives in (relative to the source root).
    pub files: BTreeMap<ModPath, String>,
    /// Every module, inline ones included → the file module it belongs to.
    owner: BTreeMap<ModPath, ModPath>,
    /// (module, name) → the absolute path a re-export names.
    reexports: BTreeMap<(ModPath, String), ModPath>,
    /// (module, name) → the absolute path a plain `use` names (for paths that start with it).
    aliases: BTreeMap<(ModPath, String), ModPath>,
    /// importer → imported → (file, line) of the first place that shows it.
    pub edges: BTreeMap<ModPath, BTreeMap<ModPath, (String, usize)>>,
    /// The library's name as other targets in the tree write it.
    crate_name: String,
}

/// The module path of a file relative to the source root: `cli/sample.rs` → `cli::sample`;
/// `lib.rs` and `x/mod.rs` stand for their directory. `main.rs`, the binary's root, is a
/// module `main` of its own, so that the library's root and the binary's stay apart; the
/// modules the binary declares (`mod cli;`) sit beside the library's, where `crate::cli::…`
/// finds them.
fn module_of(rel: &str) -> ModPath {
    let mut parts: ModPath = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    let last = parts.last().map(String::as_str);
    if matches!(last, Some("mod")) || parts.len() == 1 && last == Some("lib") {
        parts.pop();
    }
    parts
}

pub fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

impl ModuleGraph {
    /// The graph of every `.rs` file under `root` (a crate's `src/`); `crate_name` is the
    /// library's name as other targets in the same tree write it (`ddim_wgpu::…`).
    pub fn from_dir(root: &Path, crate_name: &str) -> std::io::Result<Self> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) -> std::io::Result<()> {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    walk(&path, root, out)?;
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path.strip_prefix(root).unwrap().to_string_lossy();
                    out.push((rel.replace('\\', "/"), std::fs::read_to_string(&path)?));
                }
            }
            Ok(())
        }
        let mut files = Vec::new();
        walk(root, root, &mut files)?;
        let refs: Vec<(&str, &str)> = files.iter().map(|(p, s)| (&p[..], &s[..])).collect();
        Ok(Self::from_sources(&refs, crate_name))
    }

    /// The graph of in-memory files: (path relative to the source root, text).
    pub fn from_sources(files: &[(&str, &str)], crate_name: &str) -> Self {
        let mut graph = ModuleGraph {
            files: BTreeMap::new(),
            owner: BTreeMap::new(),
            reexports: BTreeMap::new(),
            aliases: BTreeMap::new(),
            edges: BTreeMap::new(),
            crate_name: crate_name.to_string(),
        };
        let mut scans = Vec::new();
        for (rel, src) in files {
            let module = module_of(rel);
            graph.files.insert(module.clone(), rel.to_string());
            graph.owner.insert(module.clone(), module.clone());
            scans.push((module.clone(), rel.to_string(), scan_file(&module, src)));
        }
        for (module, _, scan) in &scans {
            for m in &scan.inline_mods {
                graph.owner.insert(m.clone(), module.clone());
            }
        }
        // Names first (re-exports and aliases), then what each path resolves to.
        for (_, _, scan) in &scans {
            for (scope, item, _) in &scan.reexports {
                if let (Some(name), Some(abs)) = (&item.name, graph.absolute(scope, &item.path)) {
                    graph.reexports.insert((scope.clone(), name.clone()), abs);
                }
            }
            for (scope, item, _) in &scan.uses {
                if let (Some(name), Some(abs)) = (&item.name, graph.absolute(scope, &item.path)) {
                    graph.aliases.insert((scope.clone(), name.clone()), abs);
                }
            }
        }
        for (module, rel, scan) in &scans {
            let uses = scan.uses.iter().map(|(s, it, l)| (s, &it.path, *l));
            let inline = scan.inline.iter().map(|(s, p, l)| (s, p, *l));
            // A re-export of the module's own submodules is a facade, transparent to whoever
            // names it; one of anything else is also a use of it.
            let reexports = scan.reexports.iter().filter_map(|(s, it, l)| {
                let abs = graph.absolute(s, &it.path)?;
                (!abs.starts_with(s)).then_some((s, &it.path, *l))
            });
            let lines: Vec<_> = uses.chain(inline).chain(reexports).collect();
            for (scope, path, line) in lines {
                let Some(abs) = graph.absolute(scope, path) else {
                    continue;
                };
                let Some(target) = graph.defining_file(&abs, 0) else {
                    continue;
                };
                if target != *module {
                    graph
                        .edges
                        .entry(module.clone())
                        .or_default()
                        .entry(target)
                        .or_insert((rel.clone(), line));
                }
            }
        }
        graph
    }

    /// `path` as written in `scope`, made absolute; `None` for another crate's path.
    fn absolute(&self, scope: &ModPath, path: &[String]) -> Option<ModPath> {
        let first = path.first()?;
        let mut base = match first.as_str() {
            "crate" => return Some(path[1..].to_vec()),
            name if name == self.crate_name => return Some(path[1..].to_vec()),
            "self" => scope.clone(),
            "super" => scope.clone(),
            _ => {
                // The binary's root declares its modules beside the library's (see module_of).
                let parent = if scope.len() == 1 && scope[0] == "main" {
                    Vec::new()
                } else {
                    scope.clone()
                };
                let mut child = parent.clone();
                child.push(first.clone());
                if self.owner.contains_key(&child) {
                    let mut abs = parent;
                    abs.extend(path.iter().cloned());
                    return Some(abs);
                }
                let alias = self.aliases.get(&(scope.clone(), first.clone()));
                let alias = alias.or_else(|| self.reexports.get(&(scope.clone(), first.clone())));
                let mut abs = alias?.clone();
                abs.extend(path[1..].iter().cloned());
                return Some(abs);
            }
        };
        let mut rest = &path[1..];
        if first == "super" {
            base.pop();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The file module that defines what the absolute `path` names, following re-exports.
    fn defining_file(&self, path: &[String], depth: usize) -> Option<ModPath> {
        let known = (0..=path.len())
            .rev()
            .find(|&n| self.owner.contains_key(&path[..n]))?;
        let (module, rest) = (path[..known].to_vec(), &path[known..]);
        if let (Some(name), true) = (rest.first(), depth < 16) {
            if let Some(target) = self.reexports.get(&(module.clone(), name.clone())) {
                let mut next = target.clone();
                next.extend(rest[1..].iter().cloned());
                return self.defining_file(&next, depth + 1);
            }
        }
        self.owner.get(&module).cloned()
    }

    /// Pairs of file modules that import each other, each pair once, sorted.
    pub fn mutual_pairs(&self) -> Vec<(ModPath, ModPath)> {
        let mut pairs = Vec::new();
        for (a, targets) in &self.edges {
            for b in targets.keys() {
                if a < b && self.edges.get(b).is_some_and(|t| t.contains_key(a)) {
                    pairs.push((a.clone(), b.clone()));
                }
            }
        }
        pairs
    }

    /// Groups of file modules that reach each other through imports (strongly connected
    /// components of more than one module), each sorted. A mutual pair is one such group.
    pub fn cycles(&self) -> Vec<Vec<ModPath>> {
        let nodes: Vec<&ModPath> = self.files.keys().collect();
        let reach = |from: &ModPath| -> BTreeSet<ModPath> {
            let mut seen = BTreeSet::new();
            let mut stack = vec![from.clone()];
            while let Some(m) = stack.pop() {
                for next in self.edges.get(&m).into_iter().flat_map(|t| t.keys()) {
                    if seen.insert(next.clone()) {
                        stack.push(next.clone());
                    }
                }
            }
            seen
        };
        let reaches: BTreeMap<&ModPath, BTreeSet<ModPath>> =
            nodes.iter().map(|&m| (m, reach(m))).collect();
        let mut groups: BTreeSet<Vec<ModPath>> = BTreeSet::new();
        for &a in &nodes {
            let group: Vec<ModPath> = nodes
                .iter()
                .filter(|&&b| reaches[a].contains(b) && reaches[b].contains(a))
                .map(|&b| b.clone())
                .collect();
            if group.len() > 1 {
                groups.insert(group);
            }
        }
        groups.into_iter().collect()
    }

    /// One line per import from `a` to `b`: where it is.
    pub fn why(&self, a: &ModPath, b: &ModPath) -> String {
        match self.edges.get(a).and_then(|t| t.get(b)) {
            Some((file, line)) => format!("{} -> {} ({file}:{line})", show(a), show(b)),
            None => format!("{} -/-> {}", show(a), show(b)),
        }
    }
}
