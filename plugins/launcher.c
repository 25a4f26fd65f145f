/* Plugin launcher, lifecycle (docs/architecture.md §6): one monitor thread starts every plugin in
 * its own process group, reads its output, reaps it, restarts it on failure if asked, and on stop
 * sends SIGTERM then SIGKILL. Scanning is in scan.c, output logging in output.c. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/log.h"
#include "plugins/launcher.h"

#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 60000
/* A plugin that ran this long before failing starts its back-off afresh. */
#define BACKOFF_RESET_MS 60000
/* How often children are polled where pidfd_open is missing (kernels before 5.3). */
#define POLL_FALLBACK_MS 100

static const char *const state_names[] = {
    [PLUGIN_NOT_STARTED] = "not-started", [PLUGIN_RUNNING] = "running",
    [PLUGIN_RESTARTING] = "restarting",	  [PLUGIN_EXITED] = "exited",
    [PLUGIN_FAILED] = "failed",		  [PLUGIN_STOPPED] = "stopped",
};

/* ------------------------------------------------------------------------------------------
 * The guard: PR_SET_PDEATHSIG kills a plugin's main process with the node, but not what that
 * process started (a shell script's `sleep`, a Python subprocess). The guard is a small child
 * of the node, outside every plugin group, told the group of each plugin as it starts and
 * ends; when its socket to the node reads end-of-file (the node died, however) it SIGKILLs
 * the groups still listed. After a normal stop the list is empty and it just exits.
 * ------------------------------------------------------------------------------------------ */

static void guard_main(int fd, pid_t *groups, size_t cap) __attribute__((noreturn));

static void
guard_main(int fd, pid_t *groups, size_t cap)
{
	/* Signals meant for the node's terminal group (Ctrl-C) must not end it first. */
	setpgid(0, 0);
	struct sigaction ign = {.sa_handler = SIG_IGN};
	sigaction(SIGINT, &ign, NULL);
	sigaction(SIGTERM, &ign, NULL);
	sigaction(SIGHUP, &ign, NULL);
	sigaction(SIGQUIT, &ign, NULL);
	/* Holds no pipe of anyone's open (a test reading the node's stderr to its end). */
	int null = open("/dev/null", O_RDWR);
	for (int i = 0; null >= 0 && i < 3; i++)
		dup2(null, i);
	close_range(3, (unsigned)fd - 1, 0);
	close_range((unsigned)fd + 1, ~0u, 0);
	int32_t rec;
	size_t have = 0;
	for (;;) {
		ssize_t n = read(fd, (char *)&rec + have, sizeof(rec) - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if ((have += (size_t)n) < sizeof(rec))
			continue;
		have = 0;
		for (size_t i = 0; i < cap; i++) /* > 0: a new group; < 0: that group ended */
			if (rec > 0 ? !groups[i] : groups[i] == -rec) {
				groups[i] = rec > 0 ? rec : 0;
				break;
			}
	}
	for (size_t i = 0; i < cap; i++)
		if (groups[i] > 0)
			kill(-groups[i], SIGKILL);
	_exit(0);
}

static void
guard_start(struct kvn_plugins *pl)
{
	int sv[2];
	if (!pl->n)
		return;
	pid_t *groups = calloc(pl->n, sizeof(*groups)); /* the child may not malloc */
	if (!groups || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
		kvn_warn(COMP,
			 "no guard process (%s): children of plugins may outlive a killed "
			 "node",
			 groups ? strerror(errno) : "out of memory");
		free(groups);
		return;
	}
	pid_t pid = fork();
	if (pid == 0)
		guard_main(sv[1], groups, pl->n);
	free(groups);
	close(sv[1]);
	if (pid < 0) {
		kvn_warn(COMP,
			 "no guard process (fork: %s): children of plugins may outlive a "
			 "killed node",
			 strerror(errno));
		close(sv[0]);
		return;
	}
	pl->guard_fd = sv[0];
	pl->guard_pid = pid;
}

static void
guard_tell(struct kvn_plugins *pl, pid_t group, bool started)
{
	int32_t rec = started ? group : -group;
	if (pl->guard_fd >= 0 && send(pl->guard_fd, &rec, sizeof(rec), MSG_NOSIGNAL) < 0)
		kvn_debug(COMP, "guard process: %s", strerror(errno));
}

static void
guard_stop(struct kvn_plugins *pl)
{
	if (pl->guard_fd < 0)
		return;
	close(pl->guard_fd);
	pl->guard_fd = -1;
	waitpid(pl->guard_pid, NULL, 0);
}

/* ------------------------------------------------------------------------------------------
 * Starting one plugin
 * ------------------------------------------------------------------------------------------ */

/* Between fork and execve in a threaded process: async-signal-safe calls only. */
static void child_exec(const struct plugin *p, pid_t parent, int devnull, const int out[2],
		       const int err[2]) __attribute__((noreturn));

static void
child_exec(const struct plugin *p, pid_t parent, int devnull, const int out[2], const int err[2])
{
	/* Its own group, so that stop reaches whatever the plugin starts. */
	setpgid(0, 0);
	/* Dies with the node even when the node is SIGKILLed. The parent may have died before
	 * prctl took effect: then nothing will ever send the signal, so check. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(127);
	/* A node started with a std fd closed may hold these at 0-2: move them out of the way
	 * before dup2 overwrites one with another. */
	int in = devnull, o = out[1], e = err[1];
	if ((in < 3 && (in = fcntl(in, F_DUPFD, 3)) < 0) ||
	    (o < 3 && (o = fcntl(o, F_DUPFD, 3)) < 0) || (e < 3 && (e = fcntl(e, F_DUPFD, 3)) < 0))
		_exit(127);
	if (dup2(in, STDIN_FILENO) < 0 || dup2(o, STDOUT_FILENO) < 0 || dup2(e, STDERR_FILENO) < 0)
		_exit(127);
	/* The node blocks SIGTERM/SIGINT in every thread and ignores SIGPIPE; a blocked mask and
	 * ignored signals survive execve, and the plugin must see them as any program does. */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	struct sigaction dfl = {.sa_handler = SIG_DFL};
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			sigaction(sig, &dfl, NULL);
	close_range(3, ~0u, 0); /* node sockets without O_CLOEXEC */
	if (chdir(p->dir) == 0)
		execve(p->argv[0], p->argv, p->envp);
	/* strerror is not async-signal-safe: the likely causes by hand, else the number. */
	int code = errno;
	const char *why = code == ENOEXEC  ? "not a program the kernel runs (add a #! line)\n"
			  : code == EACCES ? "permission denied\n"
			  : code == ENOENT ? "no such file or directory\n"
					   : NULL;
	char num[24];
	size_t n = sizeof(num);
	num[--n] = '\n';
	do
		num[--n] = (char)('0' + code % 10);
	while ((code /= 10) && n > 6);
	memcpy(num + n - 6, "errno ", 6);
	n -= 6;
	if (write(STDERR_FILENO, p->exec_fail, strlen(p->exec_fail)) > 0)
		(void)!write(STDERR_FILENO, why ? why : num + n,
			     why ? strlen(why) : sizeof(num) - n);
	_exit(127);
}

static void
close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Called only by the monitor thread: PR_SET_PDEATHSIG fires when the thread that forked
 * ends, and the monitor lives until every plugin is gone. */
static int
spawn(struct kvn_plugins *pl, struct plugin *p)
{
	int out[2] = {-1, -1}, err[2] = {-1, -1}, devnull = -1;
	int rc = 0;
	if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) ||
	    (devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
		rc = -errno;
		goto out;
	}
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		rc = -errno;
		goto out;
	}
	if (pid == 0)
		child_exec(p, parent, devnull, out, err);
	setpgid(pid, pid); /* also here: no window in which a stop would miss the group */
	guard_tell(pl, pid, true);
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	pthread_mutex_lock(&pl->lock);
	p->pid = pid;
	p->fd[0] = out[0];
	p->fd[1] = err[0];
	out[0] = err[0] = -1;
	p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	p->line[0].len = p->line[1].len = 0;
	p->state = PLUGIN_RUNNING;
	p->started_ms = kvn_now_ms();
	pthread_mutex_unlock(&pl->lock);
	kvn_info(COMP, "plugin %s started (pid %d, %s)", p->path, (int)pid, p->interp);
out:
	if (rc) {
		kvn_warn(COMP, "plugin %s not started: %s", p->path, strerror(-rc));
		pthread_mutex_lock(&pl->lock);
		p->state = PLUGIN_FAILED;
		pthread_mutex_unlock(&pl->lock);
	}
	close_fd(&out[0]);
	close_fd(&out[1]);
	close_fd(&err[0]);
	close_fd(&err[1]);
	close_fd(&devnull);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * The monitor thread
 * ------------------------------------------------------------------------------------------ */

/* Reads what stream s of p has now; at end of stream flushes the partial line and closes. */
static void
drain(struct kvn_plugins *pl, struct plugin *p, int s)
{
	char buf[65536];
	for (int rounds = 0; p->fd[s] >= 0 && rounds < 16; rounds++) {
		ssize_t n = read(p->fd[s], buf, sizeof(buf));
		if (n > 0) {
			kvn_plugin_output_feed(pl, p, s, buf, (size_t)n);
			continue;
		}
		if (n < 0 && (errno == EINTR))
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		kvn_plugin_output_flush(pl, p, s);
		close_fd(&p->fd[s]);
	}
}

static void
reaped(struct kvn_plugins *pl, struct plugin *p, int status)
{
	/* status -1: gone without a status (SIGCHLD ignored in this process reaps children). */
	int code = status == -1	       ? -1
		   : WIFEXITED(status) ? WEXITSTATUS(status)
				       : 128 + WTERMSIG(status);
	bool stopping = atomic_load(&pl->stopping);
	/* What the plugin wrote before it ended comes before the note that it ended. Output
	 * still held by its own children is cut: they are sent SIGTERM below. */
	for (int s = 0; s < 2; s++) {
		drain(pl, p, s);
		kvn_plugin_output_flush(pl, p, s);
		close_fd(&p->fd[s]);
	}
	close_fd(&p->pidfd);
	kill(-p->pid, stopping ? SIGKILL : SIGTERM); /* what is left of its group */
	guard_tell(pl, p->pid, false);
	if (status == -1)
		kvn_logq_note(pl, KVN_LOG_WARN, p,
			      "ended; its exit status is lost (this process ignores SIGCHLD)");
	else if (WIFEXITED(status))
		kvn_logq_note(pl, code ? KVN_LOG_WARN : KVN_LOG_INFO, p, "exited with status %d",
			      code);
	else
		kvn_logq_note(pl,
			      stopping && WTERMSIG(status) == SIGTERM ? KVN_LOG_INFO : KVN_LOG_WARN,
			      p, "killed by signal %d (%s)", WTERMSIG(status),
			      sigdescr_np(WTERMSIG(status)) ? sigdescr_np(WTERMSIG(status))
							    : "unknown signal");

	uint64_t now = kvn_now_ms();
	pthread_mutex_lock(&pl->lock);
	p->pid = 0;
	p->exit_code = code;
	if (stopping) {
		p->state = PLUGIN_STOPPED;
	} else if (code <= 0) {
		p->state = PLUGIN_EXITED;
	} else if (!pl->restart_on_failure) {
		p->state = PLUGIN_FAILED;
	} else {
		if (!p->backoff_ms || now - p->started_ms >= BACKOFF_RESET_MS)
			p->backoff_ms = BACKOFF_MIN_MS;
		else if ((p->backoff_ms *= 2) > BACKOFF_MAX_MS)
			p->backoff_ms = BACKOFF_MAX_MS;
		p->restart_at_ms = now + p->backoff_ms;
		p->state = PLUGIN_RESTARTING;
	}
	pthread_mutex_unlock(&pl->lock);
	if (p->state == PLUGIN_RESTARTING)
		kvn_logq_note(pl, KVN_LOG_WARN, p,
			      "restarting in %.1f s (plugin_restart: on-failure)",
			      p->backoff_ms / 1000.0);
}

static void
try_reap(struct kvn_plugins *pl, struct plugin *p)
{
	int status;
	pid_t r = waitpid(p->pid, &status, WNOHANG);
	if (r == p->pid)
		reaped(pl, p, status);
	else if (r < 0 && errno == ECHILD)
		reaped(pl, p, -1); /* else its pidfd would stay readable: a busy loop */
}

static void
signal_all(struct kvn_plugins *pl, int sig)
{
	for (size_t i = 0; i < pl->n; i++)
		if (pl->p[i].pid > 0)
			kill(-pl->p[i].pid, sig);
}

/* What the monitor polls: the wake fd, then stdout, stderr and pidfd of each plugin. Allocated
 * before the thread starts, so running out of memory is an error of kvn_plugins_start rather
 * than a poll on a NULL array. */
struct watched {
	struct plugin *p;
	int what; /* 0 stdout, 1 stderr, 2 pidfd */
};

struct monitor {
	struct kvn_plugins *pl;
	struct pollfd *fds;
	struct watched *who;
	/* Once stopping: SIGTERM sent, then SIGKILL at deadline (ms) to what still runs. */
	bool term_sent, kill_sent;
	uint64_t deadline;
};

static void
monitor_free(struct monitor *m)
{
	if (m) {
		free(m->fds);
		free(m->who);
		free(m);
	}
}

static struct monitor *
monitor_new(struct kvn_plugins *pl)
{
	struct monitor *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->pl = pl;
	m->fds = calloc(1 + 3 * pl->n, sizeof(*m->fds));
	m->who = calloc(1 + 3 * pl->n, sizeof(*m->who));
	if (!m->fds || !m->who) {
		monitor_free(m);
		return NULL;
	}
	return m;
}

/* Spawns every plugin, then tells kvn_plugins_start they were. */
static void
launch_all(struct kvn_plugins *pl)
{
	for (size_t i = 0; i < pl->n; i++)
		if (pl->p[i].state == PLUGIN_STOPPED)
			spawn(pl, &pl->p[i]);
	pthread_mutex_lock(&pl->lock);
	pl->launched = true;
	pthread_cond_signal(&pl->launched_cond);
	pthread_mutex_unlock(&pl->lock);
}

/* While stopping: SIGTERM to all at once, SIGKILL once plugin_stop_timeout_ms is over. */
static void
escalate_stop(struct monitor *m, uint64_t now)
{
	struct kvn_plugins *pl = m->pl;
	if (!m->term_sent) {
		m->term_sent = true;
		pthread_mutex_lock(&pl->lock); /* kvn_plugins_set_policy may change it */
		m->deadline = now + pl->stop_timeout_ms;
		pthread_mutex_unlock(&pl->lock);
		signal_all(pl, SIGTERM);
	}
	if (!m->kill_sent && now >= m->deadline) {
		m->kill_sent = true;
		signal_all(pl, SIGKILL);
	}
}

/* A plugin waiting to restart: given up when stopping, spawned once due, else *timeout
 * shortened to its restart time. True when it was spawned (it is then watched). */
static bool
restart_if_due(struct kvn_plugins *pl, struct plugin *p, bool stopping, uint64_t now, int *timeout)
{
	if (stopping) {
		pthread_mutex_lock(&pl->lock);
		p->state = PLUGIN_STOPPED;
		pthread_mutex_unlock(&pl->lock);
		return false;
	}
	if (now >= p->restart_at_ms) {
		pthread_mutex_lock(&pl->lock);
		p->restarts++;
		pthread_mutex_unlock(&pl->lock);
		spawn(pl, p);
		return true;
	}
	uint64_t wait = p->restart_at_ms - now;
	if (*timeout < 0 || wait < (uint64_t)*timeout)
		*timeout = (int)wait;
	return false;
}

/* Fills m->fds (and m->who) with the wake fd, then stdout, stderr and pidfd of each running
 * plugin; returns how many. *running counts the running plugins; *timeout is shortened to the
 * next restart, or to POLL_FALLBACK_MS for a plugin without a pidfd. */
static nfds_t
fill_poll_set(struct monitor *m, bool stopping, uint64_t now, size_t *running, int *timeout)
{
	struct kvn_plugins *pl = m->pl;
	struct pollfd *fds = m->fds;
	struct watched *who = m->who;
	nfds_t nfds = 0;
	fds[nfds++] = (struct pollfd){.fd = pl->wake_fd, .events = POLLIN};
	for (size_t i = 0; i < pl->n; i++) {
		struct plugin *p = &pl->p[i];
		if (p->state == PLUGIN_RESTARTING && !restart_if_due(pl, p, stopping, now, timeout))
			continue;
		if (p->pid <= 0)
			continue;
		(*running)++;
		for (int s = 0; s < 2; s++)
			if (p->fd[s] >= 0) {
				who[nfds].p = p;
				who[nfds].what = s;
				fds[nfds++] = (struct pollfd){.fd = p->fd[s], .events = POLLIN};
			}
		if (p->pidfd >= 0) {
			who[nfds].p = p;
			who[nfds].what = 2;
			fds[nfds++] = (struct pollfd){.fd = p->pidfd, .events = POLLIN};
		} else if (*timeout < 0 || *timeout > POLL_FALLBACK_MS) {
			*timeout = POLL_FALLBACK_MS;
		}
	}
	return nfds;
}

/* After a poll that saw n fds ready: empties the wake fd, reads the plugins' output and reaps
 * the ones that ended (those without a pidfd are tried on every pass). */
static void
handle_ready(struct monitor *m, int n, nfds_t nfds)
{
	struct kvn_plugins *pl = m->pl;
	struct pollfd *fds = m->fds;
	struct watched *who = m->who;
	if (n > 0 && (fds[0].revents & POLLIN)) {
		uint64_t v;
		ssize_t r = read(pl->wake_fd, &v, sizeof(v));
		(void)r;
	}
	for (nfds_t k = 1; n > 0 && k < nfds; k++) {
		struct plugin *p = who[k].p;
		if (!fds[k].revents || p->pid <= 0)
			continue;
		if (who[k].what < 2)
			drain(pl, p, who[k].what);
		else
			try_reap(pl, p);
	}
	for (size_t i = 0; i < pl->n; i++)
		if (pl->p[i].pid > 0 && pl->p[i].pidfd < 0)
			try_reap(pl, &pl->p[i]);
}

/* Only after a poll failure can some still run: do not leave them behind. */
static void
kill_leftovers(struct kvn_plugins *pl)
{
	signal_all(pl, SIGKILL);
	for (size_t i = 0; i < pl->n; i++)
		if (pl->p[i].pid > 0) {
			int status = -1;
			if (waitpid(pl->p[i].pid, &status, 0) != pl->p[i].pid)
				status = -1;
			reaped(pl, &pl->p[i], status);
		}
}

static void *
monitor_main(void *arg)
{
	struct monitor *m = arg;
	struct kvn_plugins *pl = m->pl;

	guard_start(pl);
	launch_all(pl);
	for (;;) {
		bool stopping = atomic_load(&pl->stopping);
		uint64_t now = kvn_now_ms();
		size_t running = 0;
		int timeout = -1;
		if (stopping)
			escalate_stop(m, now);
		nfds_t nfds = fill_poll_set(m, stopping, now, &running, &timeout);
		if (stopping && !running)
			break;
		if (stopping && !m->kill_sent) {
			uint64_t left = m->deadline > now ? m->deadline - now : 0;
			if (timeout < 0 || left < (uint64_t)timeout)
				timeout = (int)left;
		}
		int n = poll(m->fds, nfds, timeout);
		if (n < 0 && errno != EINTR) {
			kvn_err(COMP, "poll failed: %s; plugins are no longer watched",
				strerror(errno));
			break;
		}
		handle_ready(m, n, nfds);
	}
	kill_leftovers(pl);
	guard_stop(pl);
	monitor_free(m);
	return NULL;
}

/* ------------------------------------------------------------------------------------------
 * API
 * ------------------------------------------------------------------------------------------ */

static void
free_all(struct kvn_plugins *pl)
{
	for (size_t i = 0; i < pl->n; i++)
		kvn_plugin_free(&pl->p[i]);
	free(pl->p);
	if (pl->wake_fd >= 0)
		close(pl->wake_fd);
	pthread_mutex_destroy(&pl->lock);
	pthread_cond_destroy(&pl->launched_cond);
	pthread_mutex_destroy(&pl->qlock);
	pthread_cond_destroy(&pl->qcond);
	free(pl);
}

int
kvn_plugins_launch(const struct kvn_plugins_launch *l, struct kvn_plugins **out, char *err,
		   size_t errlen)
{
	static const struct kvn_plugins_opts alone = {KVN_PLUGINS_OPTS_INIT,
						      .role = KVN_PLUGIN_WORKER, .worker_count = 1};
	struct kvn_plugins_launch lo = *l;
	const struct kvn_plugins_opts *opts = l->opts ? l->opts : &alone;
	lo.opts = opts;
	struct kvn_plugins *pl = calloc(1, sizeof(*pl));
	int rc;
	*out = NULL;
	if (!pl) {
		return kvn_seterr(-ENOMEM, err, errlen, "plugins: out of memory");
	}
	pthread_mutex_init(&pl->lock, NULL);
	pthread_cond_init(&pl->launched_cond, NULL);
	pthread_mutex_init(&pl->qlock, NULL);
	pthread_cond_init(&pl->qcond, NULL);
	pl->guard_fd = -1;
	pl->stop_timeout_ms = l->stop_timeout_ms;
	pl->restart_on_failure = l->restart_on_failure;
	pl->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (pl->wake_fd < 0) {
		rc = -errno;
		kvn_seterr(rc, err, errlen, "plugins: eventfd: %s", strerror(-rc));
		free_all(pl);
		return rc;
	}
	if ((rc = kvn_plugin_scan(&lo, &pl->p, &pl->n)) < 0) {
		kvn_seterr(rc, err, errlen, "plugins: scanning plugin_locations: %s",
			   strerror(-rc));
		free_all(pl);
		return rc;
	}
	size_t runnable = 0;
	for (size_t i = 0; i < pl->n; i++)
		runnable += pl->p[i].state != PLUGIN_NOT_STARTED;
	if (l->nlocations)
		kvn_info(COMP, "%zu plugin%s for %s %d of %d", runnable, runnable == 1 ? "" : "s",
			 kvn_plugin_role_name(opts->role), opts->worker_id, opts->worker_count);
	if ((rc = kvn_logq_start(pl)) < 0) {
		kvn_seterr(rc, err, errlen, "plugins: cannot start the logger thread: %s",
			   strerror(-rc));
		free_all(pl);
		return rc;
	}
	struct monitor *m = monitor_new(pl);
	if (!m) {
		rc = -ENOMEM;
		kvn_seterr(rc, err, errlen,
			   "plugins: out of memory for the monitor of %zu plugins; free memory or "
			   "remove plugins from plugin_locations",
			   pl->n);
		kvn_logq_finish(pl);
		free_all(pl);
		return rc;
	}
	if ((rc = -pthread_create(&pl->monitor, NULL, monitor_main, m)) < 0) {
		kvn_seterr(rc, err, errlen, "plugins: cannot start the monitor thread: %s",
			   strerror(-rc));
		monitor_free(m);
		kvn_logq_finish(pl);
		free_all(pl);
		return rc;
	}
	/* Started (or failed) one by one before this returns: stat right after is accurate. */
	pthread_mutex_lock(&pl->lock);
	while (!pl->launched)
		pthread_cond_wait(&pl->launched_cond, &pl->lock);
	pthread_mutex_unlock(&pl->lock);
	*out = pl;
	return 0;
}

KVN_API void
kvn_plugins_stop(struct kvn_plugins *pl)
{
	if (!pl)
		return;
	atomic_store(&pl->stopping, true);
	uint64_t one = 1;
	ssize_t w = write(pl->wake_fd, &one, sizeof(one));
	(void)w;
	pthread_join(pl->monitor, NULL);
	kvn_logq_finish(pl);
	free_all(pl);
}

KVN_API void
kvn_plugins_set_policy(struct kvn_plugins *pl, bool restart_on_failure, uint32_t stop_timeout_ms)
{
	if (!pl)
		return;
	pthread_mutex_lock(&pl->lock);
	pl->restart_on_failure = restart_on_failure;
	pl->stop_timeout_ms = stop_timeout_ms;
	pthread_mutex_unlock(&pl->lock);
}

int
kvn_plugins_snapshot(struct kvn_plugins *pl, struct kvn_plugin_stat **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	if (!pl)
		return 0;
	pthread_mutex_lock(&pl->lock);
	struct kvn_plugin_stat *st = calloc(pl->n ? pl->n : 1, sizeof(*st));
	bool ok = st != NULL;
	size_t i = 0;
	for (; ok && i < pl->n; i++) {
		const struct plugin *p = &pl->p[i];
		st[i] = (struct kvn_plugin_stat){
		    .name = strdup(p->file),
		    .file = strdup(p->path),
		    .interpreter = strdup(p->interp ? p->interp : ""),
		    .state = state_names[p->state],
		    .pid = p->pid > 0 ? (int)p->pid : 0,
		    .exit_code = p->exit_code,
		    .restarts = p->restarts,
		    .dropped_lines = p->dropped,
		};
		ok = st[i].name && st[i].file && st[i].interpreter;
	}
	pthread_mutex_unlock(&pl->lock);
	if (!ok) {
		kvn_plugins_snapshot_free(st, i);
		return -ENOMEM;
	}
	*out = st;
	*n = i;
	return 0;
}

void
kvn_plugins_snapshot_free(struct kvn_plugin_stat *st, size_t n)
{
	for (size_t i = 0; st && i < n; i++) {
		free(st[i].name);
		free(st[i].file);
		free(st[i].interpreter);
	}
	free(st);
}

cJSON *
kvn_plugins_stats_cjson(struct kvn_plugins *pl)
{
	struct kvn_plugin_stat *st;
	size_t n;
	if (kvn_plugins_snapshot(pl, &st, &n))
		return NULL;
	cJSON *a = cJSON_CreateArray();
	bool ok = a != NULL;
	for (size_t i = 0; ok && i < n; i++) {
		const struct kvn_plugin_stat *p = &st[i];
		cJSON *o = cJSON_CreateObject();
		ok = o && cJSON_AddItemToArray(a, o) && cJSON_AddStringToObject(o, "name", p->name) &&
		     cJSON_AddStringToObject(o, "file", p->file) &&
		     cJSON_AddStringToObject(o, "interpreter", p->interpreter) &&
		     (p->pid > 0 ? cJSON_AddNumberToObject(o, "pid", p->pid)
				 : cJSON_AddNullToObject(o, "pid")) &&
		     cJSON_AddStringToObject(o, "state", p->state) &&
		     cJSON_AddNumberToObject(o, "restarts", p->restarts) &&
		     (p->exit_code >= 0 ? cJSON_AddNumberToObject(o, "exit_code", p->exit_code)
					: cJSON_AddNullToObject(o, "exit_code")) &&
		     cJSON_AddNumberToObject(o, "dropped_lines", (double)p->dropped_lines);
	}
	kvn_plugins_snapshot_free(st, n);
	if (!ok) {
		cJSON_Delete(a);
		return NULL;
	}
	return a;
}

KVN_API char *
kvn_plugins_stats_json(struct kvn_plugins *pl)
{
	cJSON *a = kvn_plugins_stats_cjson(pl);
	char *s = a ? cJSON_PrintUnformatted(a) : NULL;
	cJSON_Delete(a);
	return s;
}
