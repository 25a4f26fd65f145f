/* Test helper: run child processes (a daemon, a CLI command) with deadlines, redirect their
 * stdio to files, wait on conditions, and never leave one behind. Every wait has a deadline;
 * none of them is an assertion on timing. */
#ifndef KVN_TEST_PROC_H
#define KVN_TEST_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct proc {
	pid_t pid; /* 0 when not started */
	bool reaped;
	int status; /* waitpid status once reaped */
};

struct proc_opts {
	const char *stdin_path;	 /* NULL: /dev/null */
	const char *stdout_path; /* NULL: /dev/null; created/truncated */
	const char *stderr_path; /* NULL: /dev/null; created/truncated */
	const char *const *env;	 /* extra "NAME=VALUE" (or "NAME" to unset), NULL-terminated */
	const char *cwd;	 /* NULL: the test's */
};

/* Starts argv[0] (a path) with argv. The child gets SIGKILL if the test process dies, so a
 * crashed or timed-out test leaves no daemon behind. Returns 0 or a negative errno. */
int proc_spawn(struct proc *p, const char *const argv[], const struct proc_opts *opts);
/* Waits up to timeout_ms (< 0: forever) for the child to exit. 0 once reaped, -ETIMEDOUT. */
int proc_wait(struct proc *p, int timeout_ms);
/* Exit code, or 128 + signal when killed by one, or -1 while not reaped. */
int proc_exit_code(const struct proc *p);
/* Still running (not reaped and waitpid says alive)? Reaps it if it has exited. */
bool proc_alive(struct proc *p);
/* Sends sig; if the child has not exited within timeout_ms, SIGKILLs and reaps it. Returns the
 * exit code as proc_exit_code. No-op on a reaped or never-started proc. */
int proc_stop(struct proc *p, int sig, int timeout_ms);

/* Spawns, waits up to timeout_ms and returns the exit code; a child still running at the
 * deadline is killed and -ETIMEDOUT returned. */
int proc_run(const char *const argv[], const struct proc_opts *opts, int timeout_ms);

/* Polls cond(ctx) every few milliseconds until it is true (returns true) or timeout_ms passes
 * (returns false). */
bool proc_wait_for(bool (*cond)(void *ctx), void *ctx, int timeout_ms);
/* cond for proc_wait_for: a unix socket at path (const char *) accepts a connection. */
bool proc_cond_socket_accepts(void *path);
/* cond for proc_wait_for: nothing exists at path (const char *). */
bool proc_cond_path_gone(void *path);

/* Whole file, NUL-terminated (malloc'd); *len (may be NULL) gets its length. NULL on error. */
char *proc_read_file(const char *path, size_t *len);
/* Writes len bytes to path (created/truncated). 0 or a negative errno. */
int proc_write_file(const char *path, const void *data, size_t len);

/* A fresh directory under $TMPDIR (or /tmp) named after tag; rm_tree removes it and all it
 * holds. Both return 0 or a negative errno. */
int proc_mkdtemp(const char *tag, char *out, size_t outlen);
int proc_rm_tree(const char *path);
/* Pins the calling thread to one CPU (tests that squeeze a race window); cpu < 0: no-op. */
void proc_pin_self(int cpu);

#endif
