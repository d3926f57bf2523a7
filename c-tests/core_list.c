/* A global pointer to a linked list on the heap, changed over time: step s (1, 2, ...)
 * pushes a node whose value is s onto the list and sets `counter` to s, so at any
 * moment the list is counter, counter-1, ..., 1 (its length is counter). Used by
 * inspector/tests/core.rs: the core file of any recorded version, opened by gdb, must
 * show such a list, never a mix.
 *
 * Usage: core_list STEPS STEP_US. Prints "ready" once the first node is in, then runs
 * STEPS steps STEP_US microseconds apart and prints "done".
 *
 * The globals are page-aligned so that they lie in the part of .bss past the
 * executable's last file page: an anonymous mapping, which memshadow versions. (The
 * first page of .bss shares the file's last page of .data, a private file mapping
 * memshadow does not version: a global there shows in a core as it was read at
 * record time.) */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct node {
    long value;
    struct node *next;
    char pad[200];
};

long counter __attribute__((aligned(4096)));
struct node *head __attribute__((aligned(4096)));

static void push(long s)
{
    struct node *n = malloc(sizeof *n);
    if (!n)
        abort();
    n->value = s;
    n->next = head;
    head = n;
    counter = s;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    long steps = atol(argv[1]);
    long step_us = atol(argv[2]);
    push(1);
    printf("ready\n");
    fflush(stdout);
    for (long s = 2; s <= steps; s++) {
        usleep(step_us);
        push(s);
    }
    printf("done %ld\n", counter);
    return 0;
}
