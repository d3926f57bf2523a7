//! Compilers and build tools on generated sources (gcc, g++, make -j2 driving gcc and
//! ar, bison and flex, and binutils: as, ld, objdump, readelf, nm, ar, strip), natively
//! and with snapshots every 10 ms (gcc also every 1 ms): same output, and the same
//! objects, archives and programs byte for byte.
//!
//! A missing program fails the test naming the Debian package; `.ci/run` installs them.

mod common;

use std::fmt::Write as _;

use common::real::{write, Case, DIR};
use common::{require_tool, Prog};

/// `n` C functions (loops and switches: work for the optimiser), each `static` unless
/// `exported`, named `PREFIX_i`, and a function `PREFIX_sum` that calls them all.
fn c_functions(prefix: &str, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let _ = writeln!(
            s,
            "int {prefix}_{i}(int x) {{ int s = {i}; for (int k = 0; k < x; k++) s = s * 31 + (k ^ {i}); \
             switch (x & 7) {{ case 0: return s; case 1: return s + {i}; case 2: return s * 3; default: return s - x; }} }}"
        );
    }
    let _ = write!(s, "long {prefix}_sum(void) {{ long t = 0;");
    for i in 0..n {
        let _ = write!(s, " t += {prefix}_{i}({});", (i * 7) % 40);
    }
    s.push_str(" return t; }\n");
    s
}

#[test]
fn gcc() {
    let gcc = require_tool("gcc", "gcc");
    let source = format!(
        "#include <stdio.h>\n{}int main(void) {{ printf(\"%ld\\n\", f_sum()); return 0; }}\n",
        c_functions("f", 60)
    );
    Case::new("gcc")
        .setup(move |d| write(d, "prog.c", &source))
        .step(Prog::new(&gcc).args([
            "-O2",
            "-g",
            "-Wall",
            &format!("-fdebug-prefix-map={DIR}=/src"),
            "-o",
            "prog",
            "prog.c",
        ]))
        .step(Prog::new("./prog"))
        .one_ms()
        .run();
}

const CPP_SOURCE: &str = r#"#include <algorithm>
#include <cstdio>
#include <map>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

template <typename K, typename V>
struct Table {
    std::map<K, std::vector<V>> rows;
    void add(const K &k, const V &v) { rows[k].push_back(v); }
    template <typename F>
    auto fold(F f) const {
        decltype(f(V{}, V{})) acc{};
        for (const auto &[k, vs] : rows)
            acc = std::accumulate(vs.begin(), vs.end(), acc, f);
        return acc;
    }
};

template <int N>
struct Fib { static constexpr long value = Fib<N - 1>::value + Fib<N - 2>::value; };
template <> struct Fib<1> { static constexpr long value = 1; };
template <> struct Fib<0> { static constexpr long value = 0; };

int main() {
    Table<std::string, long> t;
    Table<int, double> u;
    std::vector<std::thread> workers;
    std::vector<long> sums(2);
    for (int n = 0; n < 2; n++)
        workers.emplace_back([n, &sums] {
            std::vector<long> v(200000);
            std::iota(v.begin(), v.end(), n);
            std::sort(v.begin(), v.end(), [](long a, long b) { return (a * 7919) % 1009 < (b * 7919) % 1009 || ((a * 7919) % 1009 == (b * 7919) % 1009 && a < b); });
            sums[n] = v[12345] + v[199999];
        });
    for (auto &w : workers) w.join();
    for (int i = 0; i < 50000; i++) {
        t.add("k" + std::to_string(i % 997), i);
        u.add(i % 13, i * 0.5);
    }
    std::printf("%ld %ld %ld %.1f %ld\n", sums[0], sums[1],
                t.fold([](long a, long b) { return a + b; }),
                u.fold([](double a, double b) { return a + b; }), Fib<60>::value);
    return 0;
}
"#;

#[test]
fn gplusplus() {
    let gxx = require_tool("g++", "g++");
    let out = Case::new("g++")
        .setup(|d| write(d, "prog.cpp", CPP_SOURCE))
        .step(Prog::new(&gxx).args(["-O2", "-std=c++17", "-pthread", "-o", "prog", "prog.cpp"]))
        .step(Prog::new("./prog"))
        .run();
    assert!(
        out.stdout(1).ends_with(" 1548008755920\n"),
        "{}",
        out.stdout(1)
    );
}

const MAKEFILE: &str = "\
OBJS := $(patsubst %.c,%.o,$(wildcard src/*.c))
CFLAGS := -O2 -Wall -Iinclude

all: app

libparts.a: $(OBJS)
\tar rcs $@ $^

app: main.o libparts.a
\t$(CC) -o $@ main.o -L. -lparts

%.o: %.c include/parts.h
\t$(CC) $(CFLAGS) -c -o $@ $<

result.txt: app
\t./app > $@

check: result.txt
\tcat result.txt
";

/// A project of 8 generated files, built by `make -j2` (gcc and ar under it), then
/// its program run by `make check`.
#[test]
fn make_two_jobs() {
    let make = require_tool("make", "make");
    require_tool("gcc", "gcc");
    require_tool("ar", "binutils");
    let out = Case::new("make -j2")
        .setup(|d| {
            let mut header = String::new();
            let mut main =
                String::from("#include <stdio.h>\n#include \"parts.h\"\nint main(void) {\n");
            for p in 0..8 {
                let _ = writeln!(header, "long p{p}_sum(void);");
                let _ = writeln!(main, "    printf(\"part {p}: %ld\\n\", p{p}_sum());");
                write(d, &format!("src/p{p}.c"), c_functions(&format!("p{p}"), 12));
            }
            main.push_str("    return 0;\n}\n");
            write(d, "include/parts.h", header);
            write(d, "main.c", main);
            write(d, "Makefile", MAKEFILE);
        })
        .step(Prog::new(&make).args(["-j2", "-s", "--no-print-directory", "all"]))
        .step(Prog::new(&make).args(["-s", "--no-print-directory", "check"]))
        .run();
    assert_eq!(out.stdout(1).lines().count(), 8, "{}", out.stdout(1));
}

/// Bison and flex generate a calculator, gcc builds it, and it evaluates generated
/// expressions.
#[test]
fn bison_and_flex() {
    let bison = require_tool("bison", "bison");
    let flex = require_tool("flex", "flex");
    let gcc = require_tool("gcc", "gcc");
    let grammar = r#"%{
#include <stdio.h>
int yylex(void);
void yyerror(const char *s) { fprintf(stderr, "error: %s\n", s); }
%}
%define api.value.type {long}
%token NUM
%left '+' '-'
%left '*' '/' '%'
%precedence NEG
%%
input: %empty | input line ;
line: '\n' | exp '\n' { printf("%ld\n", $1); } ;
exp: NUM | exp '+' exp { $$ = $1 + $3; } | exp '-' exp { $$ = $1 - $3; }
   | exp '*' exp { $$ = $1 * $3; } | exp '/' exp { $$ = $3 ? $1 / $3 : 0; }
   | exp '%' exp { $$ = $3 ? $1 % $3 : 0; } | '-' exp %prec NEG { $$ = -$2; }
   | '(' exp ')' { $$ = $2; } ;
%%
int main(void) { return yyparse(); }
"#;
    let lexer = r#"%option noyywrap nounput noinput
%{
#include "calc.tab.h"
%}
%%
[0-9]+ { yylval = atol(yytext); return NUM; }
[ \t]+ ;
.|\n { return yytext[0]; }
%%
"#;
    let mut r = common::real::Rng::new(3);
    let mut exprs = String::new();
    for _ in 0..20000 {
        let (a, b, c, e) = (r.below(1000), r.below(100), r.below(50) + 1, r.below(9));
        let _ = writeln!(exprs, "({a} + {b}) * {c} - {e} % ({c} + 1) / 2 + -{b}");
    }
    let out = Case::new("bison + flex")
        .setup(move |d| {
            write(d, "calc.y", grammar);
            write(d, "calc.l", lexer);
        })
        .step(Prog::new(&bison).args(["-d", "calc.y"]))
        .step(Prog::new(&flex).args(["-o", "lex.yy.c", "calc.l"]))
        .step(Prog::new(&gcc).args(["-O1", "-o", "calc", "calc.tab.c", "lex.yy.c"]))
        .step(Prog::new("./calc").stdin(exprs))
        .run();
    assert_eq!(
        out.stdout(3).lines().count(),
        20000,
        "{}",
        common::tail(&out.outputs[3].stdout)
    );
}

/// Binutils on a generated assembly file of 20,000 functions: as, ld, objdump,
/// readelf, nm, ar, strip.
#[test]
fn binutils() {
    let tools: Vec<_> = ["as", "ld", "objdump", "readelf", "nm", "ar", "strip"]
        .iter()
        .map(|t| require_tool(t, "binutils"))
        .collect();
    let [r#as, ld, objdump, readelf, nm, ar, strip] = &tools[..] else {
        unreachable!("seven tools")
    };
    let out = Case::new("binutils")
        .setup(|d| {
            let mut s = String::from(".text\n");
            for i in 0..20000 {
                let call = if i % 3 == 0 { "call fn0@PLT" } else { "nop" };
                let _ = writeln!(
                    s,
                    ".globl fn{i}\n.type fn{i}, @function\nfn{i}:\n  movl ${i}, %eax\n  addl %edi, %eax\n  {call}\n  ret\n.size fn{i}, .-fn{i}"
                );
            }
            s.push_str(".data\n");
            for i in (0..20000).step_by(5) {
                let _ = writeln!(s, "d{i}: .quad fn{i}");
            }
            write(d, "gen.s", s);
        })
        .step(Prog::new(r#as).args(["-o", "gen.o", "gen.s"]))
        .step(Prog::new(ld).args(["-shared", "-o", "libgen.so", "gen.o"]))
        .step(Prog::new(objdump).args(["-d", "-r", "gen.o"]))
        .step(Prog::new(readelf).args(["-a", "-W", "libgen.so"]))
        .step(Prog::new(nm).args(["-n", "gen.o"]))
        .step(Prog::new(ar).args(["rcsD", "libgen.a", "gen.o"]))
        .step(Prog::new(strip).args(["-o", "gen.stripped.so", "libgen.so"]))
        .run();
    assert!(out.stdout(4).contains(" T fn19999\n"), "nm misses fn19999");
}
