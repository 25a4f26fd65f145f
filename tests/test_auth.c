/* Cluster auth (core/auth.c): the proofs (a MAC under the token's key, bound to a label and the
 * nonces), and the host's generated token file: created once with mode 0600, the same for
 * processes racing to create it, refused when others may read it. */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/auth.h"
#include "node/engine/config.h"
#include "tests/helpers/proc.h"

static char dir[256], path[PATH_MAX], err[1024];

static void
setup(void)
{
	cr_assert_eq(proc_mkdtemp("auth", dir, sizeof(dir)), 0);
	snprintf(path, sizeof(path), "%s/state/auth_token", dir);
}

static void
teardown(void)
{
	proc_rm_tree(dir);
}

TestSuite(auth, .init = setup, .fini = teardown);

Test(auth, a_proof_checks_only_under_the_same_token_label_and_nonces)
{
	struct kvn_auth a, b, none;
	kvn_auth_init(&a, "cluster-secret");
	kvn_auth_init(&b, "cluster-secreT");
	kvn_auth_init(&none, "");
	cr_assert(a.set && !none.set);
	uint8_t n1[KVN_AUTH_NONCE], n2[KVN_AUTH_NONCE], mac[KVN_AUTH_MAC];
	kvn_auth_nonce(n1);
	kvn_auth_nonce(n2);
	cr_assert_neq(memcmp(n1, n2, sizeof(n1)), 0, "nonces are random");
	const struct kvn_auth_part p[] = {{n1, sizeof(n1)}, {n2, sizeof(n2)}};
	const struct kvn_auth_part swapped[] = {{n2, sizeof(n2)}, {n1, sizeof(n1)}};
	kvn_auth_mac(&a, "label one", p, 2, mac);
	cr_assert(kvn_auth_verify(&a, "label one", p, 2, mac, KVN_AUTH_MAC));
	cr_assert(kvn_auth_verify(&a, "label one", p, 2, mac, 16), "a 16-byte prefix checks");
	cr_assert_not(kvn_auth_verify(&a, "label one", p, 2, mac, 8), "8 bytes are too few");
	cr_assert_not(kvn_auth_verify(&b, "label one", p, 2, mac, KVN_AUTH_MAC), "another token");
	cr_assert_not(kvn_auth_verify(&a, "label two", p, 2, mac, KVN_AUTH_MAC), "another label");
	cr_assert_not(kvn_auth_verify(&a, "label one", swapped, 2, mac, KVN_AUTH_MAC),
		      "the nonces in the other order");
	cr_assert_not(kvn_auth_verify(&none, "label one", p, 2, mac, KVN_AUTH_MAC),
		      "no token proves nothing");
	mac[31] ^= 1;
	cr_assert_not(kvn_auth_verify(&a, "label one", p, 2, mac, KVN_AUTH_MAC), "one bit off");
	/* The label ends where its NUL is: moving a byte between label and data changes it. */
	uint8_t m1[KVN_AUTH_MAC], m2[KVN_AUTH_MAC];
	kvn_auth_mac(&a, "ab", (struct kvn_auth_part[]){{"c", 1}}, 1, m1);
	kvn_auth_mac(&a, "a", (struct kvn_auth_part[]){{"bc", 2}}, 1, m2);
	cr_assert_neq(memcmp(m1, m2, sizeof(m1)), 0);
}

Test(auth, the_token_file_is_created_once_with_mode_0600_and_read_back)
{
	char *t1 = NULL, *t2 = NULL;
	cr_assert_eq(kvn_auth_token_file(path, false, &t1, err, sizeof(err)), -ENOENT);
	cr_assert(strstr(err, path), "%s", err);
	cr_assert_eq(kvn_auth_token_file(path, true, &t1, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(strlen(t1), 64, "32 random bytes in hex: %s", t1);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);
	char sdir[PATH_MAX];
	snprintf(sdir, sizeof(sdir), "%s/state", dir);
	cr_assert_eq(stat(sdir, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0700, "the state directory is private");
	cr_assert_eq(kvn_auth_token_file(path, true, &t2, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(t1, t2, "an existing file is read, not replaced");
	free(t1);
	free(t2);
}

Test(auth, processes_racing_to_create_the_file_all_get_the_same_token)
{
	enum { N = 8 };
	int fds[N][2];
	for (int i = 0; i < N; i++) {
		cr_assert_eq(pipe(fds[i]), 0);
		if (fork() == 0) {
			char *t = NULL, e[256];
			int rc = kvn_auth_token_file(path, true, &t, e, sizeof(e));
			ssize_t w = write(fds[i][1], rc ? e : t, strlen(rc ? e : t));
			_exit(rc || w <= 0 ? 1 : 0);
		}
		close(fds[i][1]);
	}
	char first[256] = "";
	for (int i = 0; i < N; i++) {
		char buf[256] = "";
		ssize_t n = read(fds[i][0], buf, sizeof(buf) - 1);
		close(fds[i][0]);
		cr_assert_gt(n, 0);
		buf[n] = '\0';
		int status;
		wait(&status);
		if (!first[0])
			snprintf(first, sizeof(first), "%s", buf);
		cr_assert_str_eq(buf, first, "process %d saw another token", i);
	}
	cr_assert_eq(strlen(first), 64, "%s", first);
}

Test(auth, a_token_file_others_may_read_or_an_empty_one_is_refused)
{
	char *t = NULL;
	cr_assert_eq(kvn_auth_token_file(path, true, &t, err, sizeof(err)), 0, "%s", err);
	free(t);
	cr_assert_eq(chmod(path, 0640), 0);
	cr_assert_eq(kvn_auth_token_file(path, false, &t, err, sizeof(err)), -EACCES);
	cr_assert(strstr(err, path) && strstr(err, "chmod 600"), "%s", err);
	cr_assert_null(t);
	cr_assert_eq(chmod(path, 0600), 0);
	cr_assert_eq(proc_write_file(path, " \n\n", 3), 0);
	cr_assert_eq(chmod(path, 0600), 0);
	cr_assert_lt(kvn_auth_token_file(path, false, &t, err, sizeof(err)), 0);
	cr_assert(strstr(err, "empty"), "%s", err);
	/* An operator's own token, with an editor's newline, is taken as written. */
	cr_assert_eq(proc_write_file(path, "  my-cluster-token \n", 20), 0);
	cr_assert_eq(kvn_auth_token_file(path, false, &t, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(t, "my-cluster-token");
	free(t);
}

Test(auth, the_default_file_follows_kvnode_state_dir_then_systemd_then_the_user)
{
	char p[PATH_MAX];
	setenv("KVNODE_STATE_DIR", "/srv/kvn", 1);
	setenv("STATE_DIRECTORY", "/var/lib/kvnode-unit:/var/lib/other", 1);
	cr_assert_eq(kvn_auth_default_file(p, sizeof(p)), 0);
	cr_assert_str_eq(p, "/srv/kvn/auth_token");
	unsetenv("KVNODE_STATE_DIR");
	cr_assert_eq(kvn_auth_default_file(p, sizeof(p)), 0);
	cr_assert_str_eq(p, "/var/lib/kvnode-unit/auth_token", "systemd's first StateDirectory");
	unsetenv("STATE_DIRECTORY");
	cr_assert_eq(kvn_auth_default_file(p, sizeof(p)), 0);
	if (geteuid() == 0)
		cr_assert_str_eq(p, "/var/lib/kvnode/auth_token");
	else
		cr_assert(strstr(p, "/kvnode/auth_token"), "%s", p);
}

/* The config side: the token resolved from the file, and the rule for listeners. */
Test(auth, a_non_loopback_listener_needs_a_configured_token)
{
	struct kvn_config *cfg = kvn_config_new_defaults();
	cr_assert_not_null(cfg);
	static const char *const open_addrs[] = {"0.0.0.0:7470", "10.0.0.5:0", "[::]:7470",
						 "node-1.cluster:7470"};
	for (size_t i = 0; i < 4; i++) {
		cr_assert_eq(kvn_config_check_listener(cfg, "listen", open_addrs[i], err,
						       sizeof(err)),
			     -EINVAL, "%s was let through", open_addrs[i]);
		cr_assert(strstr(err, open_addrs[i]) && strstr(err, "auth_token"), "%s", err);
	}
	static const char *const local[] = {"127.0.0.1:0", "127.3.4.5:7470", "[::1]:7470",
					    "localhost:7470"};
	for (size_t i = 0; i < 4; i++)
		cr_assert_eq(kvn_config_check_listener(cfg, "listen", local[i], err, sizeof(err)),
			     0, "%s: %s", local[i], err);
	cfg->auth_token_file = strdup(path);
	cr_assert_eq(kvn_config_check_listener(cfg, "listen", "0.0.0.0:7470", err, sizeof(err)),
		     0, "a named token file is a configured token");
	/* resolve: the named file, created by a daemon, read by the CLI */
	cr_assert_eq(kvn_config_resolve_token(cfg, false, err, sizeof(err)), 0, "%s", err);
	cr_assert_null(cfg->auth_token, "a missing file without create leaves it unset");
	cr_assert_eq(kvn_config_resolve_token(cfg, true, err, sizeof(err)), 0, "%s", err);
	cr_assert_not_null(cfg->auth_token);
	cr_assert(cfg->auth_token_from_file && !cfg->auth_token_generated);
	kvn_config_free(cfg);
}
