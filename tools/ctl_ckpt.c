/* ctl_ckpt.c - placeholder until the offline tools land. */
#include <stdio.h>

#include "ctl.h"

static int not_yet(const char *what)
{
	fprintf(stderr, "mnistctl: %s is not implemented yet\n", what);
	return CTL_EXIT_FAILED;
}

int ctl_ls(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("ls");
}

int ctl_inspect(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("inspect");
}

int ctl_verify(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("verify");
}

int ctl_convert(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("convert");
}

int ctl_freeze(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("freeze");
}

int ctl_predict(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("predict");
}
