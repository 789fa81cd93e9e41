/* cblas_sgemm for mlx on Linux CPUs (seal_env._blas loads it ahead of OpenBLAS).
 *
 * mlx sends every fp32 matrix product to cblas_sgemm, also a product with one row (one token being decoded), and
 * OpenBLAS's sgemm copies ("packs") the whole weight matrix on each call. Here a row-major product with one row
 * goes to cblas_sgemv, which reads the matrix once; every other call goes to the BLAS's own cblas_sgemm.
 * seal_gemv_bind() must be called with OpenBLAS's two functions before the first product; they may have other
 * names (scipy-openblas32's are scipy_cblas_sgemm and scipy_cblas_sgemv, which mlx could not find by itself).
 */

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *,
                         int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float, float *, int);

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

static sgemm_fn real_sgemm;
static sgemv_fn real_sgemv;

/* One-row products sent to sgemv so far (read by the tests). */
long seal_gemv_calls = 0;
/* 0 sends every product to sgemm (the benchmark compares both in one process). */
int seal_gemv_on = 1;

void seal_gemv_bind(void *sgemm, void *sgemv) {
    real_sgemm = (sgemm_fn)sgemm;
    real_sgemv = (sgemv_fn)sgemv;
}

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc) {
    int known = (trans_a == NO_TRANS || trans_a == TRANS) && (trans_b == NO_TRANS || trans_b == TRANS);
    if (seal_gemv_on && order == ROW_MAJOR && m == 1 && n > 0 && k > 0 && known) {
        /* c (1 x n) = alpha * a (1 x k) op(b) (k x n) + beta * c, i.e. c^T = alpha * op(b)^T a^T + beta * c^T */
        int inc_a = trans_a == NO_TRANS ? 1 : lda; /* a transposed is stored as a column: k x 1 with stride lda */
        if (beta == 0.0f) {
            for (int i = 0; i < n; i++) c[i] = 0.0f; /* c may hold garbage (NaN): never scale it */
        }
        if (trans_b == TRANS) /* b stored n x k */
            real_sgemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, a, inc_a, beta, c, 1);
        else /* b stored k x n */
            real_sgemv(ROW_MAJOR, TRANS, k, n, alpha, b, ldb, a, inc_a, beta, c, 1);
        seal_gemv_calls++;
        return;
    }
    real_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
