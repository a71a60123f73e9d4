/* The pod sandbox's pause process for the test CRI plugin (no registry here to pull one from):
 * waits for a signal and exits. Built statically at test time. */
#include <signal.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  for (;;) pause();
}
