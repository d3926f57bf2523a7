package require Thread
set pool {}
foreach n {0 1} {
    set tid [thread::create {
        proc work {n} {
            set d [dict create]
            for {set i 0} {$i < 40000} {incr i} {
                dict lappend d [expr {($i * 7919 + $n) % 3001}] $i
            }
            set sum 0
            dict for {k v} $d { incr sum [llength $v] }
            return "$n [dict size $d] $sum"
        }
        thread::wait
    }]
    lappend pool $tid
}
set results {}
foreach tid $pool n {0 1} {
    lappend results [thread::send $tid [list work $n]]
    thread::release $tid
}
puts [join $results \n]
proc gen {} { yield; for {set i 0} {$i < 50000} {incr i} { yield [format k%05d [expr {$i * 37 % 50000}]] } ; return "" }
coroutine g gen
set words {}
while {[set w [g]] ne ""} { lappend words $w }
set sorted [lsort $words]
puts "[llength $sorted] [lindex $sorted 0] [lindex $sorted end]"
set s [string repeat "memshadow " 20000]
set s [string map {mem MEM shadow SHADOW} $s]
regsub -all {M(E)M} $s {\1m} s
puts "[string length $s] [string range $s 0 29]"
set i [interp create]
puts [$i eval {set x 0; for {set j 0} {$j < 100000} {incr j} {incr x $j}; set x}]
interp delete $i
