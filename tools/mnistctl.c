/* mnistctl - the operator's client for mnistd and its checkpoint files. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "ctl_util.h"
#include "mn_build_config.h"

struct command {
	const char *name;
	int (*run)(int argc, char **argv, const struct ctl_globals *g);
	const char *synopsis;
};

static const struct command commands[] = {
    {"status", ctl_status, "status                 show where training stands"},
    {"reload", ctl_reload, "reload                 re-read the daemon's configuration file"},
    {"save", ctl_save, "save                   publish a checkpoint now"},
    {"pause", ctl_pause, "pause                  pause training at the next step"},
    {"resume", ctl_resume, "resume                 resume training"},
    {"ls", ctl_ls, "ls DIR                 list the checkpoints in a directory"},
    {"inspect", ctl_inspect, "inspect FILE|DIR       show a checkpoint's metadata and tensors"},
    {"verify", ctl_verify, "verify FILE...         validate checkpoint files"},
    {"convert", ctl_convert, "convert IN -o OUT      copy selected, renamed tensors"},
    {"freeze", ctl_freeze, "freeze CKPT|DIR -o OUT write an inference-only model"},
    {"export", ctl_export, "export CKPT|DIR -o OUT write an ONNX model"},
    {"predict", ctl_predict, "predict MODEL --images IDX [--labels IDX]  run a model"},
    {"plot", ctl_plot, "plot [--terminal | -o REPORT.html | --watch]  draw the run's curves"},
};

static void usage(FILE *f)
{
	fprintf(
	    f, "Usage: mnistctl [--config PATH | --instance NAME] [--socket PATH] [--json] COMMAND "
	       "[ARGS]\n"
	       "\n"
	       "Commands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %s\n", commands[i].synopsis);
	fprintf(f, "\n"
	           "Options:\n"
	           "  -c, --config PATH   configuration file, for the socket path and the\n"
	           "                      other commands' defaults (default\n"
	           "                      " MN_DEFAULT_CONFIG ")\n"
	           "  -i, --instance NAME the instance NAME of the template units mnistd@.service\n"
	           "                      and mnist-eval@.service: --config\n"
	           "                      " MN_SYSCONFDIR "/mnistd/NAME.json\n"
	           "  -s, --socket PATH   the daemon's control socket (overrides the config)\n"
	           "  -j, --json          machine-readable output\n"
	           "  -h, --help          this help; 'mnistctl COMMAND --help' for a command's\n"
	           "  -V, --version       the version\n"
	           "\n"
	           "Exit status: 0 success, 1 the daemon reported an error or a file is invalid,\n"
	           "2 usage error, 3 no daemon reachable.\n");
}

/*
 * Output that never arrived is a failure: "mnistctl ls > /dev/full" or a
 * full disk under a redirected inspect must not exit 0.
 */
static int finish(int ex)
{
	const char *why = NULL;

	errno = 0;
	if (fflush(stdout) != 0)
		why = strerror(errno);
	else if (ferror(stdout))
		why = "write error"; /* an earlier write failed; its errno is long gone */
	if (!why)
		return ex;
	fprintf(stderr, "mnistctl: cannot write the output: %s\n", why);
	return ex == MN_EX_OK ? MN_EX_FAILURE : ex;
}

/*
 * The configuration of the template units' instance name: the units read
 * /etc/mnistd/%i.json, so the name is a plain file name.
 */
static int instance_config(const char *name, char *path, size_t len)
{
	int n;

	if (!*name || strchr(name, '/') || name[0] == '.') {
		fprintf(stderr,
		        "mnistctl: --instance \"%s\": not an instance name (a plain file name, "
		        "not starting with '.')\n",
		        name);
		return -EINVAL;
	}
	n = snprintf(path, len, "%s/mnistd/%s.json", MN_SYSCONFDIR, name);
	if (n < 0 || (size_t)n >= len) {
		fprintf(stderr, "mnistctl: --instance: name too long\n");
		return -ENAMETOOLONG;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"socket", required_argument, NULL, 's'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {"instance", required_argument, NULL, 'i'},
	    {0},
	};
	struct ctl_globals g = {.config_path = MN_DEFAULT_CONFIG};
	char instance[PATH_MAX];
	int c;

	/* '+' stops at the subcommand, whose options are its own. */
	while ((c = getopt_long(argc, argv, "+c:i:s:jhV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			g.config_path = optarg;
			break;
		case 'i':
			if (instance_config(optarg, instance, sizeof(instance)) < 0)
				return MN_EX_USAGE;
			g.config_path = instance;
			break;
		case 's':
			g.socket_path = optarg;
			break;
		case 'j':
			g.json = true;
			break;
		case 'h':
			usage(stdout);
			return finish(MN_EX_OK);
		case 'V':
			printf("mnistctl %s\n", MN_VERSION);
			return finish(MN_EX_OK);
		default:
			usage(stderr);
			return MN_EX_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return MN_EX_USAGE;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[optind], commands[i].name) == 0) {
			int sub_argc = argc - optind;
			char **sub_argv = argv + optind;

			optind = 0; /* reset getopt for the subcommand (glibc: full reinit) */
			return finish(commands[i].run(sub_argc, sub_argv, &g));
		}
	}
	/* Escaped: a glob's expansion can put a file's name here. */
	fputs("mnistctl: unknown command \"", stderr);
	ctl_fputs_escaped(stderr, argv[optind]);
	fputs("\"\n\n", stderr);
	usage(stderr);
	return MN_EX_USAGE;
}
