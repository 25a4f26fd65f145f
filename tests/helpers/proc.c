/* Test helper: child processes with deadlines (see proc.h). fork + exec rather than
 * posix_spawn so that the child can ask for PR_SET_PDEATHSIG before it runs anything. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"

extern char **environ;

static long long
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
nap_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* environ with opts->env applied: "NAME=VALUE" replaces or adds, "NAME" removes. */
static char **
build_env(const char *const *extra)
{
	size_t n = 0, m = 0;
	while (environ[n])
		n++;
	while (extra && extra[m])
		m++;
	char **env = calloc(n + m + 1, sizeof(*env));
	if (!env)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		bool drop = false;
		for (size_t j = 0; j < m && !drop; j++) {
			size_t nl = strcspn(extra[j], "=");
			drop = !strncmp(environ[i], extra[j], nl) && environ[i][nl] == '=';
		}
		if (!drop)
			env[k++] = environ[i];
	}
	for (size_t j = 0; j < m; j++)
		if (strchr(extra[j], '='))
			env[k++] = (char *)extra[j];
	env[k] = NULL;
	return env;
}

static int
open_or_null(const char *path, int flags)
{
	return open(path ? path : "/dev/null", flags | O_CLOEXEC, 0644);
}

int
proc_spawn(struct proc *p, const char *const argv[], const struct proc_opts *opts)
{
	static const struct proc_opts none = {0};
	if (!opts)
		opts = &none;
	memset(p, 0, sizeof(*p));
	/* kvnode processes without an auth_token share a generated one from their state
	 * directory: the tests' own, in the build tree, never this machine's /var/lib/kvnode. */
	setenv("KVNODE_STATE_DIR", KVN_BINARY_DIR "/test-state", 0);
	/* Everything the child needs is opened here: after fork only async-signal-safe calls. */
	int in = open_or_null(opts->stdin_path, O_RDONLY);
	int out = open_or_null(opts->stdout_path, O_WRONLY | O_CREAT | O_TRUNC);
	int err = open_or_null(opts->stderr_path, O_WRONLY | O_CREAT | O_TRUNC);
	char **env = build_env(opts->env);
	int rc = 0;
	if (in < 0 || out < 0 || err < 0 || !env) {
		rc = env ? -errno : -ENOMEM;
		goto out;
	}
	pid_t parent = getpid();
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		rc = -errno;
		goto out;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127); /* the test died between fork and prctl */
		/* Start with default signal dispositions and nothing blocked, like a shell. */
		sigset_t all;
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		signal(SIGPIPE, SIG_DFL);
		if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
			_exit(127);
		if (opts->cwd && chdir(opts->cwd) < 0)
			_exit(127);
		execve(argv[0], (char *const *)argv, env);
		_exit(127);
	}
	p->pid = pid;
out:
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	if (err >= 0)
		close(err);
	free(env);
	return rc;
}

static bool
try_reap(struct proc *p, int flags)
{
	if (p->reaped || !p->pid)
		return p->reaped;
	for (;;) {
		pid_t r = waitpid(p->pid, &p->status, flags);
		if (r == p->pid) {
			p->reaped = true;
			return true;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) { /* ECHILD: someone else reaped it; treat as gone */
			p->reaped = true;
			p->status = 0;
		}
		return p->reaped;
	}
}

int
proc_wait(struct proc *p, int timeout_ms)
{
	if (!p->pid)
		return -ESRCH;
	if (timeout_ms < 0)
		return try_reap(p, 0) ? 0 : -ECHILD;
	long long deadline = now_ms() + timeout_ms;
	int nap = 1;
	while (!try_reap(p, WNOHANG)) {
		if (now_ms() >= deadline)
			return -ETIMEDOUT;
		nap_ms(nap);
		nap = nap < 20 ? nap * 2 : 20;
	}
	return 0;
}

int
proc_exit_code(const struct proc *p)
{
	if (!p->reaped)
		return -1;
	if (WIFEXITED(p->status))
		return WEXITSTATUS(p->status);
	if (WIFSIGNALED(p->status))
		return 128 + WTERMSIG(p->status);
	return -1;
}

bool
proc_alive(struct proc *p)
{
	return p->pid && !try_reap(p, WNOHANG);
}

int
proc_stop(struct proc *p, int sig, int timeout_ms)
{
	if (!p->pid)
		return -1;
	if (!p->reaped) {
		kill(p->pid, sig);
		if (proc_wait(p, timeout_ms) < 0) {
			kill(p->pid, SIGKILL);
			proc_wait(p, -1);
		}
	}
	return proc_exit_code(p);
}

int
proc_run(const char *const argv[], const struct proc_opts *opts, int timeout_ms)
{
	struct proc p;
	int rc = proc_spawn(&p, argv, opts);
	if (rc)
		return rc;
	if (proc_wait(&p, timeout_ms) < 0) {
		proc_stop(&p, SIGKILL, 0);
		return -ETIMEDOUT;
	}
	return proc_exit_code(&p);
}

bool
proc_wait_for(bool (*cond)(void *ctx), void *ctx, int timeout_ms)
{
	long long deadline = now_ms() + timeout_ms;
	for (;;) {
		if (cond(ctx))
			return true;
		if (now_ms() >= deadline)
			return false;
		nap_ms(10);
	}
}

bool
proc_cond_socket_accepts(void *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path))
		return false;
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

bool
proc_cond_path_gone(void *path)
{
	struct stat st;
	return lstat(path, &st) < 0 && errno == ENOENT;
}

char *
proc_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	if (!buf)
		goto fail;
	for (;;) {
		if (n + 1 >= cap) {
			char *b = realloc(buf, cap *= 2);
			if (!b)
				goto fail;
			buf = b;
		}
		size_t r = fread(buf + n, 1, cap - n - 1, f);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(f))
		goto fail;
	fclose(f);
	buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
fail:
	free(buf);
	fclose(f);
	return NULL;
}

int
proc_write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, (const char *)data + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			close(fd);
			return -e;
		}
		done += (size_t)n;
	}
	return close(fd) < 0 ? -errno : 0;
}

int
proc_mkdtemp(const char *tag, char *out, size_t outlen)
{
	const char *tmp = getenv("TMPDIR");
	int n = snprintf(out, outlen, "%s/kvn-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
	if (n < 0 || (size_t)n >= outlen)
		return -ENAMETOOLONG;
	return mkdtemp(out) ? 0 : -errno;
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

int
proc_rm_tree(const char *path)
{
	return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) < 0 ? -errno : 0;
}

void
proc_pin_self(int cpu)
{
	if (cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}
