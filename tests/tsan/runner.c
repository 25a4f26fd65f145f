/* The test runner of the ThreadSanitizer build (criterion.h here says why it exists): main()
 * for every tests/test_<name>.c program when KVN_TSAN is on. Forks one process per test (the
 * runner itself never starts a thread, so every fork is of a single-threaded process), at most
 * --jobs at a time, each in its own process group so that a timeout also ends what it started.
 *   test_<name> [--jobs N] [--timeout S] [--tap=FILE] [--filter 'suite/name*'] */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "criterion/criterion.h"

static struct cri_test *tests;
static struct cri_suite *suites;

void
cri_register_test(struct cri_test *t)
{
	t->next = tests;
	tests = t;
}

void
cri_register_suite(struct cri_suite *s)
{
	s->next = suites;
	suites = s;
}

/* ------------------------------------------------------------------------------------------
 * Inside a test's process
 * ------------------------------------------------------------------------------------------ */

static jmp_buf cri_jmp;
static bool in_test, failed, skipped;
static pid_t test_pid;
static pthread_t test_thread;
static int report_fd = -1; /* skip reason to the runner */
static const struct cri_test *current;

static void
vreport(const char *kind, const char *file, int line, const char *expr, const char *fmt, va_list ap)
{
	char msg[2048];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	fprintf(stderr, "[%s] %s::%s: %s:%d: %s%s\n", kind, current ? current->suite : "?",
		current ? current->name : "?", file, line, *msg ? msg : expr,
		*msg ? "" : " does not hold");
	fflush(stderr);
}

/* A fatal failure leaves the test body (or init, or fini) for the next step; from another
 * thread or a child process of the test it can only end that process. */
static void
leave(void)
{
	if (getpid() != test_pid) {
		_exit(1);
	}
	if (!in_test || !pthread_equal(pthread_self(), test_thread)) {
		fflush(NULL);
		_exit(1);
	}
	longjmp(cri_jmp, 1);
}

void
cri_fail_at(bool fatal, const char *file, int line, const char *expr, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreport(fatal ? "FAIL" : "FAIL (expect)", file, line, expr, fmt, ap);
	va_end(ap);
	failed = true;
	if (fatal)
		leave();
}

void
cri_fail_str(bool fatal, const char *file, int line, const char *expr, const char *a, const char *b,
	     const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreport(fatal ? "FAIL" : "FAIL (expect)", file, line, expr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "    \"%s\" vs \"%s\"\n", a, b);
	failed = true;
	if (fatal)
		leave();
}

void
cri_skip_at(const char *file, int line, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	(void)file;
	(void)line;
	if (report_fd >= 0 && getpid() == test_pid) {
		ssize_t w = write(report_fd, msg, strlen(msg));
		(void)w;
	}
	skipped = true;
	leave();
	abort(); /* not reached */
}

void
cri_log(const char *level, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "[%s] %s\n", level, msg);
}

static const struct cri_suite *
suite_of(const struct cri_test *t)
{
	for (const struct cri_suite *s = suites; s; s = s->next)
		if (!strcmp(s->name, t->suite))
			return s;
	return NULL;
}

static void
run_here(const struct cri_test *t, void *param)
{
	const struct cri_suite *s = suite_of(t);
	current = t;
	test_pid = getpid();
	test_thread = pthread_self();
	in_test = true;
	bool setup_ok = false;
	if (!setjmp(cri_jmp)) {
		if (s && s->data.init)
			s->data.init();
		if (t->data.init)
			t->data.init();
		setup_ok = true;
	}
	if (setup_ok && !setjmp(cri_jmp)) {
		if (t->pfn)
			t->pfn(param);
		else
			t->fn();
	}
	if (!setjmp(cri_jmp)) {
		if (t->data.fini)
			t->data.fini();
	}
	if (!setjmp(cri_jmp)) {
		if (s && s->data.fini)
			s->data.fini();
	}
	in_test = false;
	fflush(NULL);
	exit(skipped && !failed ? 3 : failed || !setup_ok ? 1 : 0);
}

/* ------------------------------------------------------------------------------------------
 * The runner
 * ------------------------------------------------------------------------------------------ */

struct job {
	const struct cri_test *t;
	size_t param; /* index, for parameterized tests */
	pid_t pid;
	int pipe_r;
	double started, deadline;
	char label[512];
};

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
cmp_tests(const void *a, const void *b)
{
	const struct cri_test *x = *(const struct cri_test *const *)a;
	const struct cri_test *y = *(const struct cri_test *const *)b;
	int c = strcmp(x->suite, y->suite);
	return c ? c : strcmp(x->name, y->name);
}

static FILE *tap;
static unsigned n_pass, n_fail, n_skip, n_crash;

static void
finish(struct job *j, int status, bool timed_out)
{
	char reason[1024] = "";
	ssize_t r = read(j->pipe_r, reason, sizeof(reason) - 1);
	reason[r > 0 ? r : 0] = '\0';
	close(j->pipe_r);
	double took = now_s() - j->started;
	const char *verdict;
	if (timed_out) {
		verdict = "TIMEOUT";
		n_crash++;
	} else if (WIFSIGNALED(status)) {
		verdict = "CRASH";
		n_crash++;
	} else if (WEXITSTATUS(status) == 3) {
		verdict = "SKIP";
		n_skip++;
	} else if (WEXITSTATUS(status) == 0) {
		verdict = "PASS";
		n_pass++;
	} else {
		verdict = "FAIL";
		n_fail++;
	}
	if (!strcmp(verdict, "CRASH"))
		fprintf(stderr, "[CRASH] %s: signal %d\n", j->label, WTERMSIG(status));
	else if (!strcmp(verdict, "SKIP"))
		fprintf(stderr, "[SKIP] %s: %s\n", j->label, reason);
	else
		fprintf(stderr, "[%s] %s (%.2f s)\n", verdict, j->label, took);
	if (tap) {
		if (!strcmp(verdict, "SKIP"))
			fprintf(tap, "ok - %s # SKIP %s\n", j->label, reason);
		else
			fprintf(tap, "%s - %s\n", strcmp(verdict, "PASS") ? "not ok" : "ok",
				j->label);
		fflush(tap);
	}
	j->pid = 0;
}

static void
start(struct job *j, double timeout)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		perror("pipe");
		exit(2);
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		exit(2);
	}
	if (pid == 0) {
		setpgid(0, 0);
		close(p[0]);
		report_fd = p[1];
		void *param = NULL;
		struct criterion_test_params pp = {0};
		if (j->t->params) {
			pp = j->t->params();
			param = (char *)pp.params + j->param * pp.size;
		}
		run_here(j->t, param);
	}
	setpgid(pid, pid);
	close(p[1]);
	j->pid = pid;
	j->pipe_r = p[0];
	j->started = now_s();
	double t = j->t->data.timeout > 0 ? j->t->data.timeout : 0;
	const struct cri_suite *s = suite_of(j->t);
	if (t == 0 && s && s->data.timeout > 0)
		t = s->data.timeout;
	if (t == 0)
		t = timeout;
	j->deadline = t > 0 ? j->started + t : 0;
}

int
main(int argc, char **argv)
{
	unsigned jobs = 1;
	double timeout = 0;
	const char *filter = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if ((!strcmp(a, "--jobs") || !strcmp(a, "-j")) && i + 1 < argc)
			jobs = (unsigned)atoi(argv[++i]);
		else if (!strncmp(a, "--jobs=", 7))
			jobs = (unsigned)atoi(a + 7);
		else if (!strcmp(a, "--timeout") && i + 1 < argc)
			timeout = atof(argv[++i]);
		else if (!strncmp(a, "--timeout=", 10))
			timeout = atof(a + 10);
		else if (!strncmp(a, "--tap=", 6))
			tap = fopen(a + 6, "w");
		else if (!strcmp(a, "--filter") && i + 1 < argc)
			filter = argv[++i];
		else if (!strncmp(a, "--filter=", 9))
			filter = a + 9;
		else
			fprintf(stderr, "%s: ignoring option %s\n", argv[0], a);
	}
	if (jobs < 1)
		jobs = 1;
	size_t n = 0;
	for (struct cri_test *t = tests; t; t = t->next)
		n++;
	struct cri_test **v = calloc(n + 1, sizeof(*v));
	n = 0;
	for (struct cri_test *t = tests; t; t = t->next)
		v[n++] = t;
	qsort(v, n, sizeof(*v), cmp_tests);

	/* The runs: one per test, one per parameter of a parameterized test. */
	size_t nruns = 0, cap = 64;
	struct job *runs = calloc(cap, sizeof(*runs));
	for (size_t i = 0; i < n; i++) {
		size_t np = 1;
		if (v[i]->params) {
			struct criterion_test_params pp = v[i]->params();
			np = pp.length;
			if (pp.cleanup)
				pp.cleanup(&pp);
		}
		for (size_t k = 0; k < np; k++) {
			char label[512];
			snprintf(label, sizeof(label), "%s::%s", v[i]->suite, v[i]->name);
			char path[512];
			snprintf(path, sizeof(path), "%s/%s", v[i]->suite, v[i]->name);
			if (v[i]->data.disabled || (filter && fnmatch(filter, path, 0)))
				continue;
			if (nruns == cap)
				runs = realloc(runs, (cap *= 2) * sizeof(*runs));
			runs[nruns] = (struct job){.t = v[i], .param = k};
			if (v[i]->params)
				snprintf(label + strlen(label), sizeof(label) - strlen(label),
					 "[%zu]", k);
			snprintf(runs[nruns].label, sizeof(runs[nruns].label), "%s", label);
			nruns++;
		}
	}
	if (tap)
		fprintf(tap, "TAP version 13\n1..%zu\n", nruns);

	struct job **active = calloc(jobs, sizeof(*active));
	size_t next = 0, running = 0;
	while (next < nruns || running) {
		while (running < jobs && next < nruns) {
			for (unsigned s = 0; s < jobs; s++)
				if (!active[s]) {
					active[s] = &runs[next++];
					start(active[s], timeout);
					running++;
					break;
				}
		}
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		double t = now_s();
		for (unsigned s = 0; s < jobs; s++) {
			struct job *j = active[s];
			if (!j)
				continue;
			if (pid > 0 && pid == j->pid) {
				kill(-j->pid, SIGKILL); /* whatever the test left running */
				finish(j, status, false);
			} else if (j->deadline && t > j->deadline) {
				fprintf(stderr, "[TIMEOUT] %s: killed after %.0f s\n", j->label,
					t - j->started);
				kill(-j->pid, SIGKILL);
				kill(j->pid, SIGKILL);
				waitpid(j->pid, &status, 0);
				finish(j, status, true);
			} else {
				continue;
			}
			active[s] = NULL;
			running--;
		}
		if (pid <= 0)
			usleep(10000);
	}
	fprintf(stderr,
		"[====] Synthesis: Tested: %zu | Passing: %u | Failing: %u | Crashing: %u | "
		"Skipped: %u\n",
		nruns, n_pass, n_fail, n_crash, n_skip);
	if (tap)
		fclose(tap);
	free(active);
	free(runs);
	free(v);
	return n_fail || n_crash ? 1 : 0;
}
