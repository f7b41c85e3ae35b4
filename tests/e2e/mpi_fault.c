/*
 * mpi_fault.c - a fault for test_mpi.py to inject into one rank: preloaded
 * there, it wraps MPI_Allreduce (through MPI's profiling interface) and
 * nudges one float of the 7th large sum it returns, as a flaky reduction or
 * a bit flip on one machine would. The ranks' parameters then differ, which
 * mnistd must notice at its next checkpoint. Built by the test with mpicc.
 */
#include <mpi.h>

int MPI_Allreduce(const void *sendbuf, void *recvbuf, int count, MPI_Datatype type, MPI_Op op,
                  MPI_Comm comm)
{
	static int large_sums;
	int rc = PMPI_Allreduce(sendbuf, recvbuf, count, type, op, comm);

	if (rc == MPI_SUCCESS && type == MPI_FLOAT && count > 100 && ++large_sums == 7)
		((float *)recvbuf)[0] += 1e-3f;
	return rc;
}
