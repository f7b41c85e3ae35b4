/*
 * ctl.h - mnistctl's subcommands. Each takes the arguments after its name
 * (argv[0] is the subcommand) and returns an exit status:
 */
#ifndef CTL_H
#define CTL_H

#include <stdbool.h>

enum {
	CTL_EXIT_OK = 0,          /* success */
	CTL_EXIT_FAILED = 1,      /* the daemon reported an error, or a file is invalid */
	CTL_EXIT_USAGE = 2,       /* bad command line */
	CTL_EXIT_UNREACHABLE = 3, /* no daemon listening on the socket */
};

/* Options that come before the subcommand. */
struct ctl_globals {
	const char *config_path; /* --config, default MN_DEFAULT_CONFIG */
	const char *socket_path; /* --socket, NULL: control.socket from the config */
	bool json;               /* --json: machine-readable output */
};

/* Control commands, talking to a running mnistd (ctl_control.c). */
int ctl_status(int argc, char **argv, const struct ctl_globals *g);
int ctl_reload(int argc, char **argv, const struct ctl_globals *g);
int ctl_save(int argc, char **argv, const struct ctl_globals *g);
int ctl_pause(int argc, char **argv, const struct ctl_globals *g);
int ctl_resume(int argc, char **argv, const struct ctl_globals *g);

/* Offline checkpoint tools (ctl_ckpt.c). */
int ctl_ls(int argc, char **argv, const struct ctl_globals *g);
int ctl_inspect(int argc, char **argv, const struct ctl_globals *g);
int ctl_verify(int argc, char **argv, const struct ctl_globals *g);
int ctl_convert(int argc, char **argv, const struct ctl_globals *g);
int ctl_freeze(int argc, char **argv, const struct ctl_globals *g);
int ctl_predict(int argc, char **argv, const struct ctl_globals *g);

#endif
