divert(-1)
define(`forloop', `pushdef(`$1', `$2')_forloop($@)popdef(`$1')')
define(`_forloop', `$4`'ifelse($1, `$3', `', `define(`$1', incr($1))$0($@)')')
define(`fib', `ifelse(eval($1 < 2), 1, $1, `eval(fib(decr($1)) + fib(eval($1 - 2)))')')
define(`show', `ifelse(eval($1 % 2500), 0, `$1 -> defn(`v$1')
')')
divert(0)dnl
forloop(`i', 1, 30000, `define(`v'i, eval(i * i % 997))')dnl
forloop(`i', 1, 30000, `show(i)')dnl
fib(21)
translit(`memshadow keeps shadows', `a-z', `A-Z')
patsubst(`one two three four', `\w+', `<\&>')
len(forloop(`i', 1, 3000, `x'))
