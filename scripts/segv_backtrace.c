/* A C/C++ backtrace on a fatal signal, for machines without gdb (the GPU machine's image has none): preloaded
 * into a process (LD_PRELOAD=.../libsegv_backtrace.so), it prints glibc's backtrace_symbols_fd of the faulting
 * thread to stderr (the one the process started with: pytest redirects fd 2 while a test runs) on SIGSEGV,
 * SIGBUS, SIGILL, SIGFPE or SIGABRT, and then dies of the same signal, so the exit
 * code still tells a crash (139 for SIGSEGV) from a timeout (124). Python's faulthandler, installed later,
 * prints the Python frames first and re-raises into this handler. Frames inside contres/_C*.so appear as
 * (+0xOFFSET): scripts/gpu_check_tools.py symbolize turns them into functions and lines with addr2line.
 *
 * Build: cc -shared -fPIC -O1 -o libsegv_backtrace.so scripts/segv_backtrace.c   (scripts/gpu_check.sh does)
 */
#define _GNU_SOURCE
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static const int kSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
static int out = 2; /* the process's stderr as it started: pytest redirects fd 2 while a test runs */

static void on_fatal(int sig) {
  static const char head[] = "\n==== segv_backtrace: fatal signal ";
  static const char tail[] = ", C/C++ frames of the faulting thread, innermost first:\n";
  char num[4] = {(char)('0' + sig / 10), (char)('0' + sig % 10), 0, 0};
  void* frames[96];
  ssize_t ignored = write(out, head, sizeof head - 1);
  ignored = write(out, num, 2);
  ignored = write(out, tail, sizeof tail - 1);
  (void)ignored;
  backtrace_symbols_fd(frames, backtrace(frames, 96), out);
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) static void install(void) {
  static char alt_stack[1 << 16]; /* so that a stack overflow still prints */
  stack_t ss;
  struct sigaction sa;
  void* warm[1];
  int fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
  if (fd >= 0) out = fd;
  backtrace(warm, 1); /* loads libgcc's unwinder now, not inside the handler */
  memset(&ss, 0, sizeof ss);
  ss.ss_sp = alt_stack;
  ss.ss_size = sizeof alt_stack;
  sigaltstack(&ss, 0);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_fatal;
  sa.sa_flags = SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  for (unsigned i = 0; i < sizeof kSignals / sizeof kSignals[0]; ++i) sigaction(kSignals[i], &sa, 0);
}
