/* Test helper: start, kill, restart and remove a private single-member etcd on 127.0.0.1. */
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "etcd_server.h"
#include "core/netaddr.h"

/* A loaded 2-core machine: etcd's first start (WAL, snapshot, election) can take a while. */
#define START_TIMEOUT_MS 60000

static bool
find_etcd(char *out, size_t outlen)
{
	if (access("/usr/bin/etcd", X_OK) == 0) {
		snprintf(out, outlen, "/usr/bin/etcd");
		return true;
	}
	const char *path = getenv("PATH");
	if (!path)
		path = "/usr/bin:/bin";
	while (*path) {
		size_t n = strcspn(path, ":");
		snprintf(out, outlen, "%.*s/etcd", (int)n, path);
		if (n && access(out, X_OK) == 0)
			return true;
		path += n + (path[n] == ':');
	}
	return false;
}

bool
etcd_server_available(void)
{
	char p[PATH_MAX];
	return find_etcd(p, sizeof(p));
}

struct body {
	char *p;
	size_t len;
};

static size_t
on_data(char *data, size_t size, size_t nmemb, void *arg)
{
	struct body *b = arg;
	size_t n = size * nmemb;
	char *p = realloc(b->p, b->len + n + 1);
	if (!p)
		return 0;
	memcpy(p + b->len, data, n);
	b->len += n;
	p[b->len] = '\0';
	b->p = p;
	return n;
}

int
etcd_server_post(const struct etcd_server *s, const char *path, const char *body, const char *token,
		 char **answer)
{
	if (answer)
		*answer = NULL;
	CURL *c = curl_easy_init();
	if (!c)
		return -ENOMEM;
	char url[256], auth[1024];
	snprintf(url, sizeof(url), "%s://%s%s", s->tls ? "https" : "http", s->endpoint, path);
	if (s->tls) {
		curl_easy_setopt(c, CURLOPT_CAINFO, s->ca);
		curl_easy_setopt(c, CURLOPT_SSLCERT, s->client_cert);
		curl_easy_setopt(c, CURLOPT_SSLKEY, s->client_key);
	}
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	if (token) {
		snprintf(auth, sizeof(auth), "Authorization: %s", token);
		h = curl_slist_append(h, auth);
	}
	struct body b = {0};
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	if (body)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	CURLcode rc = curl_easy_perform(c);
	long status = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(c);
	curl_slist_free_all(h);
	if (rc != CURLE_OK) {
		free(b.p);
		return rc == CURLE_COULDNT_CONNECT ? -ECONNREFUSED : -EIO;
	}
	if (answer)
		*answer = b.p;
	else
		free(b.p);
	return (int)status;
}

/* Answers a range request, or (with auth on, where a range without a token is refused) says
 * it is healthy on GET /health, which etcd answers "true" only once the member has a leader. */
static bool
answers(void *arg)
{
	struct etcd_server *s = arg;
	char *a = NULL;
	int st = etcd_server_post(s, "/v3/kv/range", "{\"key\":\"a2V5\"}", NULL, &a);
	bool ok = st == 200 && a && strstr(a, "\"revision\"");
	free(a);
	if (!ok && st > 0) {
		st = etcd_server_post(s, "/health", NULL, NULL, &a);
		ok = st == 200 && a && strstr(a, "\"health\":\"true\"");
		free(a);
	}
	return ok || !proc_alive(&s->proc);
}

static int
spawn(struct etcd_server *s, int n)
{
	char etcd[PATH_MAX], log[PATH_MAX], data[PATH_MAX], curl[64], purl[64], cluster[96];
	char cert[PATH_MAX], key[PATH_MAX];
	if (!find_etcd(etcd, sizeof(etcd)))
		return -ENOENT;
	snprintf(log, sizeof(log), "%s/etcd.%d.log", s->dir, n);
	snprintf(data, sizeof(data), "%s/data", s->dir);
	snprintf(cert, sizeof(cert), "%s/server.pem", s->dir);
	snprintf(key, sizeof(key), "%s/server.key", s->dir);
	snprintf(s->endpoint, sizeof(s->endpoint), "127.0.0.1:%d", s->client_port);
	snprintf(curl, sizeof(curl), "%s://127.0.0.1:%d", s->tls ? "https" : "http",
		 s->client_port);
	snprintf(purl, sizeof(purl), "http://127.0.0.1:%d", s->peer_port);
	snprintf(cluster, sizeof(cluster), "default=%s", purl);
	const char *argv[] = {etcd,	 "--name",
			      "default", "--data-dir",
			      data,	 "--listen-client-urls",
			      curl,	 "--advertise-client-urls",
			      curl,	 "--listen-peer-urls",
			      purl,	 "--initial-advertise-peer-urls",
			      purl,	 "--initial-cluster",
			      cluster,	 NULL,
			      NULL,	 NULL,
			      NULL,	 NULL,
			      NULL,	 NULL,
			      NULL};
	if (s->tls) { /* after the NULL above: the TLS flags */
		const char *tls[] = {"--cert-file",	  cert,	 "--key-file",	       key,
				     "--trusted-ca-file", s->ca, "--client-cert-auth", NULL};
		for (size_t i = 0; i < sizeof(tls) / sizeof(tls[0]); i++)
			argv[15 + i] = tls[i];
	}
	struct proc_opts o = {.stdout_path = log, .stderr_path = log};
	memset(&s->proc, 0, sizeof(s->proc));
	int rc = proc_spawn(&s->proc, argv, &o);
	if (rc < 0)
		return rc;
	proc_wait_for(answers, s, START_TIMEOUT_MS);
	if (!proc_alive(&s->proc))
		return -EADDRINUSE; /* most likely a port was taken in between */
	return answers(s) ? 0 : -ETIMEDOUT;
}

static int spawns;
static int spawn_on_free_ports(struct etcd_server *s);

int
etcd_server_start(struct etcd_server *s)
{
	memset(s, 0, sizeof(*s));
	int rc = proc_mkdtemp("kvn-etcd", s->dir, sizeof(s->dir));
	if (rc < 0)
		return rc;
	return spawn_on_free_ports(s);
}

/* Runs an openssl command line in s->dir (its output into openssl.log there). */
static int
openssl(const struct etcd_server *s, const char *args)
{
	char cmd[PATH_MAX + 1024];
	snprintf(cmd, sizeof(cmd), "cd '%s' && openssl %.900s >>openssl.log 2>&1", s->dir, args);
	return system(cmd) == 0 ? 0 : -EIO;
}

/* Free ports, then etcd on them (again when one was taken in between). */
static int
spawn_on_free_ports(struct etcd_server *s)
{
	int rc = -EADDRINUSE;
	for (int attempt = 0; attempt < 5; attempt++) {
		s->client_port = kvn_tcp_free_port();
		s->peer_port = kvn_tcp_free_port();
		if (s->client_port < 0 || s->peer_port < 0)
			return -EADDRNOTAVAIL;
		if (s->client_port == s->peer_port)
			continue;
		rc = spawn(s, spawns++);
		if (rc != -EADDRINUSE)
			break;
	}
	return rc;
}

int
etcd_server_start_tls(struct etcd_server *s)
{
	if (system("command -v openssl >/dev/null 2>&1") != 0)
		return -ENOENT;
	memset(s, 0, sizeof(*s));
	int rc = proc_mkdtemp("kvn-etcd", s->dir, sizeof(s->dir));
	if (rc < 0)
		return rc;
	s->tls = true;
	snprintf(s->ca, sizeof(s->ca), "%s/ca.pem", s->dir);
	snprintf(s->client_cert, sizeof(s->client_cert), "%s/client.pem", s->dir);
	snprintf(s->client_key, sizeof(s->client_key), "%s/client.key", s->dir);
	char ext[PATH_MAX + 16];
	snprintf(ext, sizeof(ext), "%s/ext.cnf", s->dir);
	FILE *f = fopen(ext, "w");
	if (!f)
		return -errno;
	/* etcd's own gateway dials its gRPC server with the server's certificate: with
	 * --client-cert-auth that certificate must be good for clients too. */
	fprintf(f, "[server]\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
		   "[client]\nextendedKeyUsage=clientAuth\n");
	fclose(f);
#define EC "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
	if (openssl(s, "req -x509 " EC
		       " -keyout ca.key -out ca.pem -days 2 -subj /CN=kvnode-test-ca") ||
	    openssl(s, "req " EC " -keyout server.key -out server.csr -subj /CN=127.0.0.1") ||
	    openssl(s, "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
		       "-extfile ext.cnf -extensions server -out server.pem") ||
	    openssl(s, "req " EC " -keyout client.key -out client.csr -subj /CN=kvnode-test") ||
	    openssl(s, "x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
		       "-extfile ext.cnf -extensions client -out client.pem"))
		return -EIO;
#undef EC
	return spawn_on_free_ports(s);
}

void
etcd_server_stop(struct etcd_server *s, int sig)
{
	if (s->proc.pid)
		proc_stop(&s->proc, sig, 10000);
}

int
etcd_server_restart(struct etcd_server *s)
{
	etcd_server_stop(s, SIGTERM);
	int rc = -EADDRINUSE;
	/* The old sockets may linger for a moment (etcd binds without SO_REUSEPORT): retry. */
	for (int attempt = 0; attempt < 20 && rc == -EADDRINUSE; attempt++) {
		rc = spawn(s, spawns++);
		if (rc == -EADDRINUSE)
			usleep(200 * 1000);
	}
	return rc;
}

void
etcd_server_destroy(struct etcd_server *s)
{
	etcd_server_stop(s, SIGKILL);
	if (s->dir[0])
		proc_rm_tree(s->dir);
	s->dir[0] = '\0';
}
