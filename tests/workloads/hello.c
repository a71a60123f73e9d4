/* The native twin of hello.wat's first line, run through runc to compare cold starts. */
#include <stdio.h>

int main(void) {
  puts("hello from kwasm-agent's test workload");
  return 0;
}
