"""The library's views with anonymous uploads allowed (its default check demands a login)."""

from chunked_upload.views import ChunkedUploadCompleteView, ChunkedUploadView


class AnonymousChunkedUploadView(ChunkedUploadView):
    def check_permissions(self, request):
        pass


class AnonymousChunkedUploadCompleteView(ChunkedUploadCompleteView):
    def check_permissions(self, request):
        pass
