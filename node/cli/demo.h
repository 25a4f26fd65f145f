/* `kvnode demo` (node/cli/demo.c): a scheduler and three nodes as child processes, a peer read
 * between two of them, and a clean shutdown. */
#ifndef KVN_NODE_CLI_DEMO_H
#define KVN_NODE_CLI_DEMO_H

/* Runs the demo with the nodes' config file (NULL: a small local cluster on 127.0.0.1).
 * Returns the process exit code: 0 all verified, 1 a chunk missing or corrupt, 3 a process
 * could not start. */
int kvn_demo_run(const char *config);

#endif
