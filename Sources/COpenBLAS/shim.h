#include <cblas.h>
#include <stddef.h>

// LAPACK routines that libopenblas exports but cblas.h does not declare (liblapacke-dev is not a dependency).
// Fortran calling convention: every argument by pointer, LP64 `int` (Debian's libopenblas), column-major storage,
// and a trailing hidden length for each character argument (gfortran's ABI; harmless where the callee ignores it).

/// Cholesky factorization of a symmetric positive definite matrix (`uplo` 'U' or 'L' names the triangle used).
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_length);
/// Inverse of a triangular matrix in place (`diag` 'N': a general diagonal, 'U': unit diagonal).
void dtrtri_(const char *uplo, const char *diag, const int *n, double *a, const int *lda, int *info, size_t uplo_length,
             size_t diag_length);
