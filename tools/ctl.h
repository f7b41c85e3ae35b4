/*
 * ctl.h - mnistctl's subcommands. Each takes the arguments after its name
 * (argv[0] is the subcommand) and returns an exit status (util.h): MN_EX_OK,
 * MN_EX_FAILURE when the daemon reported an error or a file is invalid,
 * MN_EX_USAGE for a bad command line, MN_EX_UNREACHABLE when no daemon
 * listens on the socket.
 */
#ifndef CTL_H
#define CTL_H

#include <stdbool.h>

#include "util.h"

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

/* A run's curves from its metrics files, drawn by gnuplot (ctl_plot.c). */
int ctl_plot(int argc, char **argv, const struct ctl_globals *g);

/* ONNX export (ctl_export.c). */
int ctl_export(int argc, char **argv, const struct ctl_globals *g);

#endif
