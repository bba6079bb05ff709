//! Data flows one way through `src/`: no file module imports a module that imports it back,
//! directly or through others. The checker (`tests/support/module_cycles.rs`) reads `use` trees,
//! re-exports and paths written inline in code; its own tests below run it on small sources.

#[path = "support/module_cycles.rs"]
mod module_cycles;

use module_cycles::{show, ModuleGraph};

/// The library's name as the binary writes it (`ddim_wgpu::…`).
fn crate_name() -> String {
    env!("CARGO_PKG_NAME").replace('-', "_")
}

/// Each cycle as lines: its modules, then each import of a mutual pair with where it is.
fn describe(graph: &ModuleGraph) -> String {
    let mut out = String::new();
    for group in graph.cycles() {
        let names: Vec<String> = group.iter().map(|m| show(m)).collect();
        out += &format!("cycle: {}\n", names.join(", "));
    }
    for (a, b) in graph.mutual_pairs() {
        out += &format!("  {}\n  {}\n", graph.why(&a, &b), graph.why(&b, &a));
    }
    out
}

#[test]
fn no_src_modules_import_each_other() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = ModuleGraph::from_dir(&src, &crate_name()).expect("reading src/");
    // A scan that finds nothing cannot tell a clean tree from a broken reader.
    assert!(graph.files.len() > 20, "only {} files", graph.files.len());
    let edges: usize = graph.edges.values().map(|t| t.len()).sum();
    assert!(edges > graph.files.len(), "only {edges} imports found");
    let cycles = graph.cycles();
    assert!(
        cycles.is_empty(),
        "src/ modules that import each other:\n{}",
        describe(&graph)
    );
}

fn graph(files: &[(&str, &str)]) -> ModuleGraph {
    ModuleGraph::from_sources(files, "mycrate")
}

fn path(s: &str) -> Vec<String> {
    s.split("::").map(str::to_string).collect()
}

fn imports(g: &ModuleGraph, a: &str, b: &str) -> bool {
    g.edges
        .get(&path(a))
        .is_some_and(|t| t.contains_key(&path(b)))
}

fn pairs(g: &ModuleGraph) -> Vec<(String, String)> {
    g.mutual_pairs()
        .iter()
        .map(|(a, b)| (show(a), show(b)))
        .collect()
}

const LIB: &str = "pub mod cli;\npub mod core;\n";

#[test]
fn an_inline_super_path_in_code_is_an_import() {
    let g = graph(&[
        ("lib.rs", LIB),
        ("cli/mod.rs", "pub mod sample;\npub mod seeds;\n"),
        (
            "cli/sample.rs",
            "use super::other;\npub fn run(seeds: bool) -> u32 {\n    if seeds {\n        \
             return super::seeds::run();\n    }\n    0\n}\npub fn check() {}\n",
        ),
        (
            "cli/seeds.rs",
            "use super::sample::check;\npub fn run() -> u32 { check(); 1 }\n",
        ),
    ]);
    assert!(imports(&g, "cli::sample", "cli::seeds"));
    assert!(imports(&g, "cli::seeds", "cli::sample"));
    assert_eq!(
        pairs(&g),
        [("cli::sample".to_string(), "cli::seeds".to_string())]
    );
    // The report says where: the inline path is on line 4.
    assert_eq!(
        g.why(&path("cli::sample"), &path("cli::seeds")),
        "cli::sample -> cli::seeds (cli/sample.rs:4)"
    );
}

#[test]
fn inline_crate_paths_in_types_and_generics_are_imports() {
    let g = graph(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        (
            "a.rs",
            "pub struct A;\npub fn f(x: Vec<crate::b::B>) -> Option<crate::c::C> { None }\n",
        ),
        ("b.rs", "pub struct B;\n"),
        ("c.rs", "pub struct C;\n"),
    ]);
    assert!(imports(&g, "a", "b"));
    assert!(imports(&g, "a", "c"));
    assert!(!imports(&g, "b", "a"));
}

#[test]
fn group_uses_with_self_and_nested_groups_are_resolved() {
    let g = graph(&[
        ("lib.rs", LIB),
        ("core/mod.rs", "pub mod x;\npub mod y;\npub mod z;\n"),
        ("core/x.rs", "pub fn f() {}\n"),
        ("core/y.rs", "pub mod deep;\npub struct Y;\n"),
        ("core/y/deep.rs", "pub struct D;\n"),
        ("core/z.rs", "pub struct Z;\n"),
        ("cli/mod.rs", "pub mod run;\n"),
        (
            "cli/run.rs",
            "use crate::core::{x::{self}, y::{deep::D, Y}, z as zed};\nfn g() { x::f(); zed::Z; }\n",
        ),
    ]);
    for target in ["core::x", "core::y", "core::y::deep", "core::z"] {
        assert!(imports(&g, "cli::run", target), "cli::run -> {target}");
    }
    assert!(pairs(&g).is_empty());
}

#[test]
fn a_name_reached_through_a_reexport_is_an_import_of_its_defining_module() {
    let g = graph(&[
        (
            "lib.rs",
            "pub mod gpu;\npub mod sampler;\npub use gpu::Plan;\n",
        ),
        (
            "gpu/mod.rs",
            "mod plan;\nmod pool;\npub use plan::{Plan, build as make_plan};\n",
        ),
        ("gpu/plan.rs", "pub struct Plan;\npub fn build() {}\n"),
        ("gpu/pool.rs", "pub fn pack() { crate::make(); }\n"),
        (
            "sampler.rs",
            "use crate::gpu::make_plan;\npub fn run(_: crate::Plan) { make_plan(); }\n",
        ),
    ]);
    assert!(imports(&g, "sampler", "gpu::plan"));
    // The facade `gpu/mod.rs` is not an import of its own submodules, nor a target.
    assert!(!imports(&g, "sampler", "gpu"));
    assert!(!imports(&g, "gpu", "gpu::plan"));
}

#[test]
fn a_cycle_through_a_reexport_is_found() {
    let g = graph(&[
        ("lib.rs", "pub mod gpu;\npub mod sampler;\n"),
        ("gpu/mod.rs", "mod plan;\npub use plan::Plan;\n"),
        (
            "gpu/plan.rs",
            "pub struct Plan;\nimpl Plan { fn f() { crate::sampler::step(); } }\n",
        ),
        ("sampler.rs", "use crate::gpu::Plan;\npub fn step() {}\n"),
    ]);
    assert_eq!(
        pairs(&g),
        [("gpu::plan".to_string(), "sampler".to_string())]
    );
}

#[test]
fn a_reexport_of_another_modules_item_is_a_use_of_it() {
    let g = graph(&[
        ("lib.rs", "pub mod kernels;\npub mod variants;\n"),
        (
            "kernels.rs",
            "pub use crate::variants::Conv as Variant;\npub const ENTRIES: u32 = 1;\n",
        ),
        (
            "variants.rs",
            "pub enum Conv { A }\npub fn n() -> u32 { crate::kernels::ENTRIES }\n",
        ),
    ]);
    assert!(imports(&g, "kernels", "variants"));
    assert_eq!(pairs(&g).len(), 1);
}

#[test]
fn longer_cycles_are_found_as_one_group() {
    let g = graph(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\n"),
        ("a.rs", "use crate::b::f;\n"),
        ("b.rs", "pub fn f() { crate::c::g() }\n"),
        ("c.rs", "pub fn g() { super::a::h() }\n"),
        ("d.rs", "use crate::a::h;\n"),
    ]);
    assert!(pairs(&g).is_empty(), "no pair imports each other directly");
    assert_eq!(g.cycles(), [vec![path("a"), path("b"), path("c")]]);
}

#[test]
fn child_module_paths_and_the_binarys_crate_name_resolve() {
    let g = graph(&[
        ("lib.rs", "pub mod model;\n"),
        (
            "model/mod.rs",
            "pub mod config;\npub fn load() { config::parse() }\n",
        ),
        (
            "model/config.rs",
            "pub fn parse() {}\npub fn default_dir() { super::load() }\n",
        ),
        ("main.rs", "mod cli;\nfn main() { cli::run() }\n"),
        (
            "cli.rs",
            "use mycrate::model::config::parse;\npub fn run() { parse() }\n",
        ),
    ]);
    assert!(imports(&g, "main", "cli"));
    assert!(imports(&g, "model", "model::config"));
    assert!(imports(&g, "model::config", "model"));
    assert!(imports(&g, "cli", "model::config"));
    assert_eq!(pairs(&g).len(), 1);
}

#[test]
fn comments_strings_tests_and_other_crates_are_not_imports() {
    let g = graph(&[
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        (
            "a.rs",
            r####"//! See crate::b::f.
/* crate::b::f() /* nested crate::b::g */ */
const S: &str = "crate::b::f";
const R: &str = r#"super::b::f "quoted" "#;
const C: char = '"';
fn life<'a>(x: &'a str) -> &'a str { std::mem::drop(1); wgpu::f(); x }
#[cfg(test)]
mod tests {
    use super::super::b::f;
    #[test]
    fn t() { crate::b::f() }
}
pub fn a() {}
"####,
        ),
        ("b.rs", "pub fn f() { crate::a::a() }\n"),
    ]);
    assert!(!imports(&g, "a", "b"), "{:?}", g.edges);
    assert!(imports(&g, "b", "a"));
}
